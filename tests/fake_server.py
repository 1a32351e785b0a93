"""A loopback fake of the OpenAI, Anthropic and Ollama HTTP APIs, for tests and benchmarks.

Speaks, streamed and not:
- ``POST /v1/chat/completions`` and ``/v1/completions`` (OpenAI; SSE chunks, usage in
  a last chunk when ``stream_options.include_usage``),
- ``POST /v1/messages`` (Anthropic; SSE events ``message_start`` … ``message_stop``),
- ``POST /api/chat`` and ``POST /api/generate`` (Ollama; NDJSON, counts and timings in
  the final ``done`` chunk).

Token counts are deterministic (words + a fixed overhead) and every response's usage
is logged with the request, so a test can assert that the database holds exactly what
the server sent. Faults are scripted per request (status, headers such as
Retry-After, body, delay, hang). The batch APIs (OpenAI's files and batches,
Anthropic's message batches) are `server.batches` (`tests.fake_batches`). Binds 127.0.0.1 only; a hang ends when the server
stops or after `HANG_LIMIT_S`, so nothing runs forever.

Standalone: ``python -m tests.fake_server --port 8765`` (for benchmarks).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .fake_batches import BatchEngine

PROMPT_OVERHEAD = 7  # tokens the fake "template" adds to every prompt
HANG_LIMIT_S = 30.0


@dataclass
class Fault:
    status: int = 0  # 0: answer normally (after `delay_s`)
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    delay_s: float = 0.0
    hang: bool = False
    # "empty": a 200 stream with no content; "cut": ends before its final chunk; "error":
    # an error event after the pieces (OpenAI's format only)
    stream: str = ""


@dataclass
class Logged:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    status: int = 200
    usage: dict[str, int] = field(default_factory=dict)
    text: str = ""


def words(text: str) -> int:
    return len(text.split())


def prompt_text(body: dict[str, Any]) -> str:
    parts = [body.get("prompt") or "", body.get("system") or ""]
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, list):  # Anthropic content blocks
            content = " ".join(b.get("text", "") for b in content)
        parts.append(content or "")
    return " ".join(parts)


def default_reply(body: dict[str, Any]) -> str:
    text = prompt_text(body)
    if "capital of" in text:
        country = text.rsplit("capital of", 1)[1].split("?")[0].strip()
        return {"France": "Paris", "Japan": "Tokyo", "Peru": "Lima"}.get(country, "I am not sure")
    return "Hello from the fake server"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 refuses connections under load

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_sockets: set[Any] = set()
        self.killed = False

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is not the server's error, nor
        is a connection the server itself cut when it was killed."""
        import sys

        exc = sys.exc_info()[1]
        if not (isinstance(exc, ConnectionError) or (self.killed and isinstance(exc, OSError))):
            super().handle_error(request, client_address)


class FakeServer:
    def __init__(
        self,
        reply: Callable[[dict[str, Any]], str] = default_reply,
        *,
        chunk_delay_s: float = 0.0,
        latency_s: float = 0.0,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        port: int = 0,
        interrupt_streams: bool = False,
        stream_usage: bool = True,
    ) -> None:
        self.reply = reply
        # as llama-cpp-python's server does (interrupt_requests): a stream that starts
        # cuts the one being served, which ends without its final chunk
        self.interrupt_streams = interrupt_streams
        self._streaming = 0  # the stream being served, when interrupt_streams
        # False: no usage chunk in streams, whatever the client asks (llama-cpp-python's)
        self.stream_usage = stream_usage
        self.chunk_delay_s = chunk_delay_s
        self.latency_s = latency_s
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.faults: deque[Fault] = deque()
        self.fault_fn: Callable[[Logged], Fault | None] | None = None
        self.served_model: str | None = None  # answer as this model, whatever was asked
        # headers added to every response (e.g. rate-limit headers), made per response
        self.extra_headers: Callable[[], dict[str, str]] | None = None
        self.log: list[Logged] = []
        self.batches = BatchEngine(self)  # the batch APIs (tests.fake_batches)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever, so only if it runs
            self._httpd.shutdown()
        self._httpd.server_close()

    def kill(self) -> None:
        """Die as a killed process does: stop listening and cut every open connection,
        the kept-alive ones and those mid-answer."""
        import socket as _socket

        self._httpd.killed = True
        self.stop()
        for sock in list(self._httpd.open_sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(_socket.SHUT_RDWR)

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_fault(self, entry: Logged) -> Fault | None:
        with self._lock:
            self.log.append(entry)
            if self.faults:
                return self.faults.popleft()
        return self.fault_fn(entry) if self.fault_fn else None

    def usage_for(self, body: dict[str, Any], text: str) -> dict[str, int]:
        prompt = words(prompt_text(body)) + PROMPT_OVERHEAD
        return {
            "prompt": prompt,
            "completion": max(words(text), 1),
            "cached": min(self.cached_tokens, prompt),
            "cache_write": min(self.cache_write_tokens, prompt - min(self.cached_tokens, prompt)),
        }


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle's algorithm on, a kept-alive
        # connection's second write waited for the client's delayed ACK, 40 ms a request
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _batches(self, method: str, raw: bytes) -> bool:
            """A batch API route (`tests.fake_batches`): answered, True."""
            answer = server.batches.handle(method, self.path, self.headers, raw)
            if answer is None:
                return False
            status, data = answer
            if isinstance(data, bytes):
                self.send_response(status)
                self.send_header("content-type", "application/octet-stream")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self._json(status, data)
            return True

        def do_GET(self) -> None:  # noqa: N802
            if not self._batches("GET", b""):
                self._json(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self._batches("POST", raw):
                return
            body = json.loads(raw or b"{}")
            entry = Logged(
                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
            )
            fault = server.next_fault(entry)
            self.stream_mode = fault.stream if fault is not None else ""
            if fault is not None:
                if fault.hang:
                    server._stopping.wait(HANG_LIMIT_S)
                    self.close_connection = True
                    return
                time.sleep(fault.delay_s)
                if fault.status:
                    entry.status = fault.status
                    self._json(
                        fault.status,
                        fault.body or _error_body(self.path, fault.status),
                        fault.headers,
                    )
                    return
            if server.latency_s:
                time.sleep(server.latency_s)
            routes = {
                "/v1/chat/completions": self._openai,
                "/v1/completions": self._openai,
                "/v1/messages": self._anthropic,
                "/api/chat": self._ollama,
                "/api/generate": self._ollama,
            }
            route = routes.get(self.path.split("?")[0].rstrip("/"))
            if route is None:
                self._json(404, {"error": f"no route {self.path}"})
                return
            text = server.reply(body)
            entry.text = text
            entry.usage = server.usage_for(body, text)
            route(body, text, entry.usage)

        # -- protocols -------------------------------------------------------------

        def _openai(self, body: dict[str, Any], text: str, u: dict[str, int]) -> None:
            legacy = self.path.startswith("/v1/completions")
            model, rid = body.get("model"), f"chatcmpl-{uuid.uuid4().hex[:12]}"
            model = server.served_model or model
            usage = {
                "prompt_tokens": u["prompt"],
                "completion_tokens": u["completion"],
                "total_tokens": u["prompt"] + u["completion"],
                "prompt_tokens_details": {"cached_tokens": u["cached"]},
                "completion_tokens_details": {"reasoning_tokens": 0},
            }
            headers = {"x-request-id": f"req_{rid}"}
            if not body.get("stream"):
                self._json(
                    200,
                    {
                        "id": rid,
                        "object": "text_completion" if legacy else "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [
                            {
                                "index": 0,
                                **(
                                    {"text": text}
                                    if legacy
                                    else {"message": {"role": "assistant", "content": text}}
                                ),
                                "finish_reason": "stop",
                                "logprobs": None,
                            }
                        ],
                        "usage": usage,
                    },
                    headers,
                )
                return

            def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
                content = {"text": delta.get("content", "")} if legacy else {"delta": delta}
                choices = (
                    []
                    if extra.get("usage")
                    else [{"index": 0, **content, "finish_reason": finish, "logprobs": None}]
                )
                data = {
                    "id": rid,
                    "object": "text_completion" if legacy else "chat.completion.chunk",
                    "created": int(time.time()),
                    "model": model,
                    "choices": choices,
                    **extra,
                }
                return f"data: {json.dumps(data)}\n\n"

            def events() -> Iterator[str]:
                if self.stream_mode == "empty":
                    yield "data: [DONE]\n\n"
                    return
                yield chunk({"role": "assistant", "content": ""})
                for piece in _pieces(text):
                    yield chunk({"content": piece})
                if self.stream_mode == "cut":
                    return
                if self.stream_mode == "error":
                    error = {"message": "the model is overloaded", "type": "server_error"}
                    yield f"data: {json.dumps({'error': error})}\n\n"
                    return
                yield chunk({}, "stop")
                if server.stream_usage and (body.get("stream_options") or {}).get("include_usage"):
                    yield chunk({}, usage=usage)
                yield "data: [DONE]\n\n"

            self._stream("text/event-stream", events(), headers)

        def _anthropic(self, body: dict[str, Any], text: str, u: dict[str, int]) -> None:
            model, mid = server.served_model or body.get("model"), f"msg_{uuid.uuid4().hex[:12]}"
            uncached = u["prompt"] - u["cached"] - u["cache_write"]
            usage = {
                "input_tokens": uncached,
                "output_tokens": u["completion"],
                "cache_read_input_tokens": u["cached"],
                "cache_creation_input_tokens": u["cache_write"],
            }
            headers = {"request-id": f"req_{mid}"}
            message = {
                "id": mid,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
            if not body.get("stream"):
                self._json(200, message, headers)
                return

            def event(kind: str, data: dict[str, Any]) -> str:
                return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

            def events() -> Iterator[str]:
                start = {
                    **message,
                    "content": [],
                    "stop_reason": None,
                    "usage": {**usage, "output_tokens": 1},
                }
                if self.stream_mode == "empty":
                    return
                yield event("message_start", {"message": start})
                yield event(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                )
                for piece in _pieces(text):
                    yield event(
                        "content_block_delta",
                        {"index": 0, "delta": {"type": "text_delta", "text": piece}},
                    )
                if self.stream_mode == "cut":
                    return
                yield event("content_block_stop", {"index": 0})
                yield event(
                    "message_delta",
                    {
                        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                        "usage": {"output_tokens": u["completion"]},
                    },
                )
                yield event("message_stop", {})

            self._stream("text/event-stream", events(), headers)

        def _ollama(self, body: dict[str, Any], text: str, u: dict[str, int]) -> None:
            chat = self.path.startswith("/api/chat")
            base = {"model": body.get("model"), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ")}

            def part(piece: str) -> dict[str, Any]:
                if chat:
                    return {**base, "message": {"role": "assistant", "content": piece}}
                return {**base, "response": piece}

            final = {
                **part("" if body.get("stream", True) else text),
                "done": True,
                "done_reason": "stop",
                "total_duration": 250_000_000,
                "load_duration": 120_000_000,
                "prompt_eval_count": u["prompt"],
                "prompt_eval_duration": 30_000_000,
                "eval_count": u["completion"],
                "eval_duration": 100_000_000,
            }
            if body.get("stream", True) is False:
                self._json(200, final)
                return

            def lines() -> Iterator[str]:
                for piece in _pieces(text):
                    yield json.dumps({**part(piece), "done": False}) + "\n"
                yield json.dumps(final) + "\n"

            self._stream("application/x-ndjson", lines())

        # -- wire ------------------------------------------------------------------

        def _json(
            self, status: int, data: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            raw = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            extra = server.extra_headers() if server.extra_headers else {}
            for k, v in {**(headers or {}), **extra}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def _stream(
            self, content_type: str, chunks: Iterator[str], headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("transfer-encoding", "chunked")
            extra = server.extra_headers() if server.extra_headers else {}
            for k, v in {**(headers or {}), **extra}.items():
                self.send_header(k, v)
            self.end_headers()
            with server._lock:
                server._streaming += 1
                mine = server._streaming
            for i, piece in enumerate(chunks):
                if i and server.chunk_delay_s:
                    time.sleep(server.chunk_delay_s)
                if server.interrupt_streams and server._streaming != mine:
                    # another request came in: cut, ended as llama-cpp-python's server
                    # ends it (its [DONE], no chunk with a finish_reason)
                    if content_type == "text/event-stream":
                        raw = b"data: [DONE]\n\n"
                        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                    break
                raw = piece.encode()
                self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def _pieces(text: str) -> list[str]:
    """Stream a reply word by word, keeping the spaces, so the pieces join back exactly."""
    out, current = [], ""
    for ch in text:
        current += ch
        if ch == " ":
            out.append(current)
            current = ""
    return [*out, current] if current else out


# What each API answers for an over-long prompt, per its documentation.
CONTEXT_LENGTH_BODIES: dict[str, dict[str, Any]] = {
    "openai": {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    },
    "anthropic": {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 210000 tokens > 200000 maximum",
        },
    },
    "ollama": {"error": "input length exceeds the context window"},
}


def _error_body(path: str, status: int) -> dict[str, Any]:
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    }.get(status, "api_error")
    message = {401: "invalid x-api-key", 429: "rate limited", 500: "internal error"}.get(
        status, kind
    )
    if path.startswith("/api/"):
        return {"error": message}
    if path.startswith("/v1/messages"):
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"message": message, "type": kind, "code": None}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seconds", type=float, default=600, help="stop by itself after this long")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="before each answer")
    args = parser.parse_args()
    server = FakeServer(port=args.port, latency_s=args.latency_ms / 1000).start()
    print(server.url, flush=True)
    time.sleep(args.seconds)
    server.stop()


if __name__ == "__main__":
    main()
