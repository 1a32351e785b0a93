"""A live request's prompt (`abharness serve`, SPEC §16): the client's messages, passed
through or wrapped by the arm's template.

`ClientMessages` is a template the builder fits to the arm's budget like any other, so
an online call takes the one call path unchanged. It renders from two variables:
``messages`` (the client's chat messages, ``[{role, content}]``, text only) and
``prompt`` (a completion request's prompt; for chat, the last user message's text).

- Without a template the client's messages (or prompt) go to the model as they are.
- A template's messages wrap the conversation: those before its last ``user`` block
  (a system message, few-shot turns) come first, then the client's messages; the
  template's last ``user`` block, when it has one, replaces the client's last user
  message (it sees it as ``prompt``). A ``prompt``-block template renders one raw prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..hashing import content_hash
from .templates import FrontMatter, Message, PromptTemplate, RenderedPrompt

PASS_THROUGH = "client"


@dataclass
class ClientMessages(PromptTemplate):
    inner: PromptTemplate | None = None

    @classmethod
    def around(cls, inner: PromptTemplate | None) -> ClientMessages:
        """The client's messages wrapped by `inner`, or passed through when it is None."""
        if inner is None:
            return cls(
                name=PASS_THROUGH,
                version=1,
                path=Path("(the client's messages)"),
                front=FrontMatter(description="the client's messages, passed through"),
                hash=content_hash("client messages, passed through", 16),
                chain=[],
                blocks=["user"],
                _library=None,  # type: ignore[arg-type]  # never resolves anything
                inner=None,
            )
        copied = {f.name: getattr(inner, f.name) for f in fields(PromptTemplate)}
        return cls(**copied, inner=inner)

    def render(self, variables: dict[str, Any]) -> RenderedPrompt:
        client = tuple(
            Message(role=m["role"], content=m["content"]) for m in variables.get("messages") or ()
        )
        prompt = variables.get("prompt")
        if self.inner is None:
            if not client:
                return RenderedPrompt(prompt=prompt or "")
            return RenderedPrompt(messages=client)
        wrapped = self.inner.render(variables)
        if wrapped.is_raw:
            return wrapped
        ours = list(wrapped.messages)
        last_user = self.inner.blocks[-1].startswith("user") and ours and ours[-1].role == "user"
        if last_user:
            head, tail = ours[:-1], [ours[-1]]
            users = [i for i, m in enumerate(client) if m.role == "user"]
            rest = [m for i, m in enumerate(client) if not users or i != users[-1]]
            return RenderedPrompt(messages=(*head, *rest, *tail))
        if not client and prompt is not None:
            client = (Message(role="user", content=prompt),)
        return RenderedPrompt(messages=(*ours, *client))


def client_variables(
    messages: list[dict[str, str]] | None, prompt: str | None = None
) -> dict[str, Any]:
    """The variables `ClientMessages` renders from: a chat request's messages, or a
    completion request's prompt."""
    if messages is None:
        return {"messages": [], "prompt": prompt or ""}
    users = [m["content"] for m in messages if m["role"] == "user"]
    return {"messages": messages, "prompt": users[-1] if users else ""}
