# Every target sets itself up: `.venv` is created and the project installed on first use,
# and re-installed only when pyproject.toml changes (the stamp file records the install).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPERIMENT ?= experiments/default.yaml
RUN ?= --last
NIGHTLY ?= experiments/nightly
# e.g. NIGHTLY_ARGS=--batch: half price through the batch APIs (README "Batch mode")
NIGHTLY_ARGS ?=
# llama-cpp-python is built here, once, without -march=native: a native build uses AMX
# where the CPU has it, and crashed (SIGSEGV at the first decode) on a machine whose
# sandbox does not grant AMX. pip's own wheel cache ignores CMAKE_ARGS, so our wheel
# is kept apart.
WHEELS ?= $(HOME)/.cache/abharness/wheels/llama-native-off
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: experiment nightly test test-fast report lint bench setup clean chromium view

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# llama-cpp-python builds from source once (~7 min on 2 cores) into $(WHEELS).
	ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || CMAKE_ARGS="-DGGML_NATIVE=OFF" \
	  $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(WHEELS) 'llama-cpp-python>=0.3.8'
	$(BIN)/pip install -q --no-deps --force-reinstall $$(ls -t $(WHEELS)/llama_cpp_python-*.whl | head -1)
	$(BIN)/pip install -q -e '.[local,dev]'
	touch $(STAMP)

# LiteLLM's proxy in a venv of its own (756 MB, about a minute): a real peer for the tests
# (tests/test_real_servers.py) and the run-loop benchmark. Pinned: newer releases need
# companion packages the registry may lack. If it does not install, its tests say so
# and are skipped; nothing else depends on it.
LITELLM_VENV := .venv-litellm
LITELLM_VERSION ?= 1.108.7
$(LITELLM_VENV)/.installed:
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)' && touch $@ \
	  || echo "LiteLLM $(LITELLM_VERSION) did not install: the tests against its proxy are skipped"

experiment: $(STAMP)
	$(BIN)/abharness run $(EXPERIMENT)

# cron: `cd /path/to/project && make nightly` (NIGHTLY=dir for another folder). make
# itself exits 2 whenever a recipe fails; the recipe says which code abharness gave.
nightly: $(STAMP)
	@$(BIN)/abharness nightly $(NIGHTLY) $(NIGHTLY_ARGS); code=$$?; [ $$code -eq 0 ] || echo "abharness nightly \
	exited $$code (3: a gate failed, 2: errors above max_error_rate, 4: a run is incomplete, \
	5: the machine refused, 1: a spec was invalid, 130: interrupted)"; exit $$code

report: $(STAMP)
	$(BIN)/abharness report $(RUN)

view: $(STAMP)
	$(BIN)/abharness view

# The browser tests (tests/test_browser.py) drive Debian's Chromium through Playwright,
# which never downloads a browser of its own. CI runs as root.
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# Both cores, a test file to a worker (module-scoped servers and databases stay shared).
test: $(STAMP) $(LITELLM_VENV)/.installed chromium
	$(BIN)/pytest -q -n 2 --dist loadfile

# The edit-test loop: everything but the tests marked slow (and the real model), in
# under a minute. CI runs the whole suite (`make test`).
test-fast: $(STAMP)
	$(BIN)/pytest -q -n 2 -m "not slow and not e2e"

# Benchmarks print Markdown tables; BENCHMARKS.md quotes them with their command.
# LITELLM_PYTHON=path/to/python adds LiteLLM's column (promptfoo's: on PATH); the
# tests' own LiteLLM venv is used when it is there.
LITELLM_PYTHON ?= $(if $(wildcard $(LITELLM_VENV)/bin/litellm),$(LITELLM_VENV)/bin/python)
bench: $(STAMP)
	$(BIN)/python -m tests.benchmarks.startup
	$(BIN)/python -m tests.benchmarks.transport
	$(BIN)/python -m tests.benchmarks.faults
	$(BIN)/python -m tests.benchmarks.killnine
	$(BIN)/python -m tests.benchmarks.blackhole
	$(BIN)/python -m tests.benchmarks.runloop $(if $(LITELLM_PYTHON),--litellm-python $(LITELLM_PYTHON))
	$(BIN)/python -m tests.benchmarks.phases
	$(BIN)/python -m tests.benchmarks.staging
	$(BIN)/python -m tests.benchmarks.verdicts --runs 100
	$(BIN)/python -m tests.benchmarks.evidence --runs 1000
	$(BIN)/python -m tests.benchmarks.view
	$(BIN)/python -m tests.benchmarks.serve

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) $(LITELLM_VENV) .pytest_cache .mypy_cache .ruff_cache
