"""The gateway's HTTP surface: OpenAI's wire format over an `OnlineSession`.

    POST /v1/chat/completions   chat, streamed (SSE) or not
    POST /v1/completions        raw completion, streamed or not
    GET  /v1/models             the one model clients name: the experiment
    POST /v1/feedback           {"id": CALL_ID, "score": 0..1, "comment": ...}
    GET  /healthz               liveness and the session's counts (no key needed)
    GET  /metrics               Prometheus (no key needed)

Every refusal is OpenAI-shaped, ``{"error": {"message", "type", "code"}}``, with the
status OpenAI's clients act on: 401 without a valid key, 429 with ``Retry-After`` past
a key's rate, 413 for a body over ``max_body_bytes``, 400 for bad JSON or a bad
request, 503 while stopping; a failed call maps its error type to 429/502/504/400.

The response's ``id`` is the call id (what ``/v1/feedback`` takes) and the header
``x-abharness-arm`` names the arm that answered. A streamed request's text goes on to
the client as the upstream sends it (an arm with ``stream: true``, the default; an arm
that does not stream, or the in-process llama.cpp, sends it in one piece at the end).
Until the first piece the call retries and falls back as any call does, and a failure
is an HTTP error; after it the stream is that call's, and a failure ends it with an
error event (the official clients raise it): no retry can take back what the client has.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..run.executor import Relay
from ..run.online import Answer, OnlineSession
from .keys import ClientKeys, RateLimiter, retry_after_header
from .metrics import CONTENT_TYPE_LATEST, GatewayMetrics

log = logging.getLogger(__name__)

ARM_HEADER = "x-abharness-arm"
SUBJECT_HEADER = "x-abharness-subject"
ROLES = ("system", "developer", "user", "assistant")

# a failed call's error type: (status, OpenAI error type, code)
CALL_ERRORS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "rate_limit_error", "upstream_rate_limited"),
    "timeout": (504, "api_error", "upstream_timeout"),
    "connection": (502, "api_error", "upstream_unreachable"),
    "server": (502, "api_error", "upstream_error"),
    "auth": (502, "api_error", "upstream_auth_failed"),
    "bad_request": (400, "invalid_request_error", "upstream_bad_request"),
    "context_length": (400, "invalid_request_error", "context_length_exceeded"),
    "content_filter": (400, "invalid_request_error", "content_filter"),
    "budget": (429, "insufficient_quota", "daily_cost_cap_reached"),
    "other": (500, "api_error", "internal_error"),
}
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class Refused(Exception):  # noqa: N818 - an HTTP answer, raised to leave a handler early
    def __init__(
        self, status: int, message: str, kind: str, code: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.code, self.headers = status, kind, code, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": str(self), "type": self.kind, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Gateway:
    def __init__(
        self,
        session: OnlineSession,
        keys: ClientKeys | None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.session = session
        self.keys = keys
        self.metrics = metrics or GatewayMetrics()
        session.on_call = self.metrics.call
        serve = session.serve
        self.limiter = RateLimiter(serve.rate_limit.rpm) if serve.rate_limit else None
        self.max_body = serve.max_body_bytes
        self.model_id = session.spec.experiment.name
        self.started = time.time()
        self.merge_result: str | None = None  # how the session ended, once it has

    # --- checks ----------------------------------------------------------------------

    def _admit(self, request: Request) -> None:
        """401 without a valid key, 429 past its rate; 503 while stopping."""
        if self.session.stopping:
            raise Refused(503, "the gateway is stopping", "api_error", "shutting_down")
        if self.keys is None:
            return
        key = self.keys.check(request.headers.get("authorization"))
        if key is None:
            raise Refused(
                401,
                "missing or invalid API key: send Authorization: Bearer <key>",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.limiter is not None:
            wait = self.limiter.admit(key)
            if wait > 0:
                raise Refused(
                    429,
                    f"rate limit of {self.limiter.rpm} requests per minute for this key reached",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                    {"Retry-After": retry_after_header(wait)},
                )

    async def _json(self, request: Request) -> dict[str, Any]:
        """The body as a JSON object: 413 past the size limit (read no further), 400
        if it is not a JSON object."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Refused(
                400, f"the body is not valid JSON: {exc}", "invalid_request_error", "invalid_json"
            ) from exc
        if not isinstance(body, dict):
            raise Refused(
                400, "the body must be a JSON object", "invalid_request_error", "invalid_json"
            )
        return body

    def _too_large(self) -> Refused:
        return Refused(
            413,
            f"the request body is larger than {self.max_body} bytes (serve.max_body_bytes)",
            "invalid_request_error",
            "request_too_large",
        )

    def _subject(self, request: Request, body: dict[str, Any]) -> str | None:
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise _bad("'user' must be a string")
        return user or request.headers.get(SUBJECT_HEADER) or None

    # --- endpoints -------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, "completions")

    async def _complete(self, request: Request, endpoint: str) -> Response:
        began = time.perf_counter()
        status = 500
        try:
            self._admit(request)
            body = await self._json(request)
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise _bad("'stream' must be true or false")
            messages, prompt = (
                (_messages(body), None) if endpoint == "chat" else (None, _prompt(body))
            )
            subject = self._subject(request, body)
            if stream:
                usage = (body.get("stream_options") or {}).get("include_usage") is True
                response = await self._streamed(messages, prompt, subject, endpoint, usage)
                status = 200
                return response
            answer = await self.session.answer(messages, prompt, subject, endpoint)
            if not answer.ok:
                raise _call_failed(answer)
            status = 200
            return JSONResponse(self._body(answer, endpoint), headers={ARM_HEADER: answer.arm_id})
        except Refused as refused:
            status = refused.status
            return refused.response()
        except Exception as exc:  # a bug of ours: still an OpenAI-shaped answer, and logged
            log.exception("request failed")
            return Refused(
                500, f"internal error: {type(exc).__name__}", "api_error", "internal_error"
            ).response()
        finally:
            m = self.metrics
            m.of(m.requests, endpoint, str(status)).inc()
            m.of(m.request_seconds, endpoint).observe(time.perf_counter() - began)

    def _body(self, answer: Answer, endpoint: str) -> dict[str, Any]:
        record = answer.record
        text = answer.response.text if answer.response else ""
        finish = _finish(record)
        if endpoint == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return {
            "id": record.call_id,
            "object": "chat.completion" if endpoint == "chat" else "text_completion",
            "created": int(record.started_at.replace(tzinfo=UTC).timestamp()),
            "model": record.served_model or _model_of(self.session.arms[answer.arm_id]),
            "choices": [choice],
            "usage": _usage(record),
        }

    async def _streamed(
        self,
        messages: list[dict[str, str]] | None,
        prompt: str | None,
        subject: str | None,
        endpoint: str,
        include_usage: bool,
    ) -> Response:
        """A streamed request. The call streams from its upstream and its text goes on to
        the client as it arrives; until the first piece arrives the call may still retry
        or fall back, and a failure is an HTTP error like any other. After it, the
        client's stream is that call's: an error ends it with an error event."""
        relay = Relay()
        answering = asyncio.create_task(
            self.session.answer(messages, prompt, subject, endpoint, relay)
        )
        began = asyncio.create_task(relay.began.wait())
        try:
            await asyncio.wait({answering, began}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            began.cancel()
        if answering.done():  # answered (or failed) before anything went out: all at once
            answer = answering.result()
            if not answer.ok:
                raise _call_failed(answer)
            assert answer.response is not None
            whole = _pieces_of(answer.response.text)
            arm_id, call_id = answer.arm_id, answer.record.call_id
            model = answer.record.served_model or _model_of(self.session.arms[arm_id])
        else:  # the model the server names comes with its last chunk: the arm's until then
            assert relay.arm_id is not None and relay.call_id is not None
            whole, arm_id, call_id = _relayed(relay), relay.arm_id, relay.call_id
            model = _model_of(self.session.arms[arm_id])
        base = {"id": call_id, "created": int(time.time()), "model": model}
        events = self._sse(base, endpoint, include_usage, whole, answering)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={ARM_HEADER: arm_id}
        )

    async def _sse(
        self,
        base: dict[str, Any],
        endpoint: str,
        include_usage: bool,
        pieces: AsyncIterator[str],
        answering: asyncio.Task[Answer],
    ) -> AsyncIterator[str]:
        """OpenAI's stream: the role (chat), each piece, the finish reason, the usage if
        asked, ``[DONE]``; an error event instead if the call failed half-way."""
        chat = endpoint == "chat"
        if chat:
            yield _chunk(base, chat, None, None, role=True)
        async for piece in pieces:
            yield _chunk(base, chat, piece, None)
        answer = await answering
        if not answer.ok:
            yield _error_event(_call_failed(answer))
            return
        record = answer.record
        yield _chunk(base, chat, None, _finish(record))
        if include_usage:
            yield _event(
                {**base, "object": _stream_object(chat), "choices": [], "usage": _usage(record)}
            )
        yield "data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        try:
            self._admit(request)
        except Refused as refused:
            return refused.response()
        model = {
            "id": self.model_id,
            "object": "model",
            "created": int(self.started),
            "owned_by": "abharness",
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def feedback(self, request: Request) -> Response:
        try:
            self._admit(request)
            body = await self._json(request)
            cid, score, comment = body.get("id"), body.get("score"), body.get("comment")
            if not isinstance(cid, str) or not cid:
                raise _bad("'id' must be the id of a response (a call id)")
            if isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1:
                raise _bad("'score' must be a number from 0 to 1")
            if comment is not None and not isinstance(comment, str):
                raise _bad("'comment' must be a string")
            if not await self.session.feedback(cid, float(score), comment):
                raise Refused(
                    404, f"no answered call with id {cid!r}", "invalid_request_error", "not_found"
                )
        except Refused as refused:
            self.metrics.feedback.labels(str(refused.status)).inc()
            return refused.response()
        self.metrics.feedback.labels("200").inc()
        return JSONResponse({"id": cid, "object": "feedback", "recorded": True})

    async def healthz(self, request: Request) -> Response:
        s = self.session
        body = {
            "status": "stopping" if s.stopping else "ok",
            "run_id": s.run_id,
            "experiment": self.model_id,
            "requests": s.stats.requests,
            "calls": s.stats.calls,
            "merges": s.stats.flushes,
            "merges_postponed": s.stats.flush_skipped,
        }
        return JSONResponse(body, status_code=503 if s.stopping else 200)

    async def metrics_page(self, request: Request) -> Response:
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_event(refused: Refused) -> str:
    """An error inside a stream, as OpenAI sends one (its clients raise `APIError`)."""
    return _event({"error": {"message": str(refused), "type": refused.kind, "code": refused.code}})


def _finish(record: Any) -> str:
    """The record's finish reason as OpenAI names it."""
    reason = record.finish_reason or "stop"
    return FINISH.get(reason, reason)


def _stream_object(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def _chunk(
    base: dict[str, Any], chat: bool, piece: str | None, finish: str | None, role: bool = False
) -> str:
    """One chunk of OpenAI's stream: a chat delta (the role, a piece, or none with the
    finish reason) or a completion's text."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if piece is not None:
            delta["content"] = piece
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    else:
        choice = {"index": 0, "text": piece or "", "finish_reason": finish, "logprobs": None}
    return _event({**base, "object": _stream_object(chat), "choices": [choice]})


async def _pieces_of(text: str) -> AsyncIterator[str]:
    yield text


async def _relayed(relay: Relay) -> AsyncIterator[str]:
    while (piece := await relay.pieces.get()) is not None:
        yield piece


def _model_of(arm: Any) -> str:
    return getattr(arm, "model", None) or arm.id


def _bad(message: str) -> Refused:
    return Refused(400, message, "invalid_request_error", "invalid_request")


def _call_failed(answer: Answer) -> Refused:
    record = answer.record
    status, kind, code = CALL_ERRORS.get(record.error_type or "other", CALL_ERRORS["other"])
    message = f"{record.arm_id}: {record.error_type}: {record.error_message}"
    return Refused(status, message, kind, code)


def _usage(record: Any) -> dict[str, int] | None:
    usage = record.usage
    if usage.input_tokens is None and usage.output_tokens is None:
        return None
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or OpenAI's list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise _bad(f"{where}: only text content parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise _bad(f"{where}: 'content' must be a string or a list of text parts")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise _bad(f"messages[{i}]: 'role' must be one of {', '.join(ROLES)}")
        role = "system" if m["role"] == "developer" else m["role"]
        out.append({"role": role, "content": _text(m.get("content"), f"messages[{i}]")})
    return out


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("'prompt' must be a string")
    return prompt


def tune_collector() -> None:
    """For a process that serves: what is loaded by now (SDKs, tokenizers, the spec:
    ~100k objects) lives as long as the process, so it is frozen out of the collector's
    sight, and young objects are collected every 10,000 allocations rather than 700
    (most are freed by then, so there is less to walk). Over 10,000 requests
    (BENCHMARKS.md) the collector's CPU fell from 2.4 s to 0.17 s and its longest pause
    from 51 ms (a full collection) to 12 ms."""
    gc.collect()  # start-up's garbage is not frozen with it
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def create_app(gateway: Gateway, *, tune_gc: bool = False) -> Starlette:
    """The ASGI app; its lifespan starts the session and, on shutdown (SIGTERM, Ctrl-C:
    after uvicorn has let the requests in flight finish), stops it: written, merged.
    `tune_gc`: the process is the gateway's own (`tune_collector`), not a test's."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.session.start()
        if tune_gc:
            tune_collector()
        try:
            yield
        finally:
            result = await gateway.session.stop()
            if result.merged:
                log.info("run %s merged into %s", gateway.session.run_id, gateway.session.db)
            else:
                log.warning("%s", result.message)
            gateway.merge_result = result.message or f"merged into {gateway.session.db}"

    return Starlette(
        routes=[
            Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
            Route("/v1/completions", gateway.completions, methods=["POST"]),
            Route("/v1/models", gateway.models, methods=["GET"]),
            Route("/v1/feedback", gateway.feedback, methods=["POST"]),
            Route("/healthz", gateway.healthz, methods=["GET"]),
            Route("/metrics", gateway.metrics_page, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
