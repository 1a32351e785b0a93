# Every target sets itself up: `.venv` is created and the project installed on first use,
# and re-installed only when pyproject.toml changes (the stamp file records the install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= experiments/default.yaml
RUN ?= --last
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: experiment test report lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# llama-cpp-python builds from source once (~7 min on 2 cores); pip caches the wheel.
	$(BIN)/pip install -q -e '.[local,dev]'
	touch $(STAMP)

experiment: $(STAMP)
	$(BIN)/abharness run $(EXPERIMENT)

report: $(STAMP)
	$(BIN)/abharness report $(RUN)

test: $(STAMP)
	$(BIN)/pytest -q

# Benchmarks print Markdown tables; BENCHMARKS.md quotes them with their command.
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.startup
	$(BIN)/python -m tests.benchmarks.transport
	$(BIN)/python -m tests.benchmarks.faults

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
