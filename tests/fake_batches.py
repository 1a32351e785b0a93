"""The batch APIs of the loopback fake server: OpenAI's Files and Batch API and
Anthropic's Message Batches, as their documentation and the official SDKs' types show.

OpenAI: ``POST /v1/files`` (multipart, ``purpose=batch``), ``GET /v1/files/{id}/content``,
``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``,
``GET /v1/batches``. Anthropic: ``POST /v1/messages/batches``, ``GET
/v1/messages/batches/{id}``, ``GET /v1/messages/batches/{id}/results``, ``POST
/v1/messages/batches/{id}/cancel``, ``GET /v1/messages/batches``.

A batch validates for `validate_s`, runs for `run_s`, then ends; its results are
the fake's ordinary answers (same text and token counts as a live call), shuffled,
except where `outcome(kind, request, generation)` scripts another: ``"expired"``,
``"error:STATUS"``, or ``"missing"`` (no result line at all). `bad_line` makes a
batch fail validation on that line (OpenAI) or refuses the request (Anthropic);
`hold_create_s` makes the create call answer late (a client killed meanwhile has
a batch at the provider and no id). Every submitted request is kept in `sent`.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any


@dataclass
class FakeBatch:
    id: str
    kind: str  # openai | anthropic
    requests: list[dict[str, Any]]
    created: float
    endpoint: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    input_file_id: str = ""
    cancelled_at: float | None = None
    results: list[dict[str, Any]] | None = None  # made when it ends
    output_file_id: str | None = None
    error_file_id: str | None = None
    failed: str | None = None  # a validation error


def _iso(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z") if t else None


class BatchEngine:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.validate_s = 0.05
        self.run_s = 0.2
        self.hold_create_s = 0.0
        self.bad_line: int | None = None  # 1-based, as OpenAI's errors count lines
        # (openai | anthropic, the request's line, the how-manieth time it is sent) -> what
        self.outcome: Callable[[str, dict[str, Any], int], str] = lambda kind, line, g: "ok"
        self.shuffle = random.Random(7)
        self.batches: dict[str, FakeBatch] = {}
        self.files: dict[str, bytes] = {}
        self.sent: list[tuple[str, str]] = []  # (batch id, custom id) per request submitted
        self.created: list[str] = []  # batch ids, in order
        self.status_calls = 0
        self._lock = threading.Lock()

    # -- what a test asks ------------------------------------------------------

    def generation(self, custom_id: str) -> int:
        return sum(1 for _, c in self.sent if c == custom_id)

    def per_request(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, c in self.sent:
            counts[c] = counts.get(c, 0) + 1
        return counts

    # -- the batch's life ------------------------------------------------------

    def _status(self, b: FakeBatch) -> str:
        age = time.time() - b.created
        if b.failed:
            return "failed" if age >= self.validate_s else "validating"
        if b.cancelled_at is not None:
            self._finish(b)
            return "cancelled"
        if age < self.validate_s:
            return "validating"
        if age < self.validate_s + self.run_s:
            return "in_progress"
        self._finish(b)
        return "completed"

    def _finish(self, b: FakeBatch) -> None:
        with self._lock:
            if b.results is not None:
                return
            out = []
            for r in b.requests:
                custom_id = r["custom_id"]
                what = (
                    "cancelled"
                    if b.cancelled_at is not None
                    else self.outcome(b.kind, r, self.generation(custom_id))
                )
                out.append({"custom_id": custom_id, "what": what, "request": r})
            self.shuffle.shuffle(out)  # results come in any order
            b.results = out

    def _answer(self, body: dict[str, Any], path: str) -> tuple[str, dict[str, int]]:
        text = self.server.reply(body)
        return text, self.server.usage_for(body, text)

    # -- OpenAI ----------------------------------------------------------------

    def upload(self, headers: Any, raw: bytes) -> dict[str, Any]:
        message = BytesParser().parsebytes(
            b"Content-Type: " + headers["content-type"].encode() + b"\r\n\r\n" + raw
        )
        content = b""
        for part in message.walk():
            if part.get_param("name", header="content-disposition") == "file":
                content = part.get_payload(decode=True) or b""
        file_id = f"file-{uuid.uuid4().hex[:16]}"
        self.files[file_id] = content
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": "abharness-batch.jsonl",
            "purpose": "batch",
            "status": "processed",
        }

    def openai_create(self, body: dict[str, Any]) -> dict[str, Any]:
        lines = self.files[body["input_file_id"]].decode().splitlines()
        requests = [json.loads(line) for line in lines if line.strip()]
        b = FakeBatch(
            f"batch_{uuid.uuid4().hex[:16]}",
            "openai",
            requests,
            time.time(),
            endpoint=body["endpoint"],
            metadata=body.get("metadata") or {},
            input_file_id=body["input_file_id"],
        )

        if self.bad_line is not None and self.bad_line <= len(requests):
            b.failed = "invalid_request"
        self._created(b)
        return self.openai_batch(b)

    def _created(self, b: FakeBatch) -> None:
        with self._lock:
            self.batches[b.id] = b
            self.created.append(b.id)
            self.sent += [(b.id, r["custom_id"]) for r in b.requests]
        if self.hold_create_s:
            time.sleep(self.hold_create_s)

    def openai_batch(self, b: FakeBatch) -> dict[str, Any]:
        self.status_calls += 1
        status = self._status(b)
        done = b.results is not None
        if done and b.output_file_id is None and not b.failed:
            self._write_files(b)
        counts = {"total": len(b.requests), "completed": 0, "failed": 0}
        if done:
            ok = sum(1 for r in b.results or [] if r["what"] == "ok")
            counts |= {"completed": ok, "failed": len(b.requests) - ok}
        errors = None
        if b.failed and status == "failed":
            errors = {
                "object": "list",
                "data": [
                    {
                        "code": "invalid_request",
                        "line": self.bad_line,
                        "message": "the body's 'model' is missing",
                        "param": "body.model",
                    }
                ],
            }
        return {
            "id": b.id,
            "object": "batch",
            "endpoint": b.endpoint,
            "errors": errors,
            "input_file_id": b.input_file_id,
            "completion_window": "24h",
            "status": status,
            "output_file_id": b.output_file_id,
            "error_file_id": b.error_file_id,
            "created_at": int(b.created),
            "completed_at": int(time.time()) if status == "completed" else None,
            "failed_at": int(time.time()) if status == "failed" else None,
            "cancelled_at": int(b.cancelled_at) if status == "cancelled" else None,
            "request_counts": counts,
            "metadata": b.metadata,
        }

    def _write_files(self, b: FakeBatch) -> None:
        out, err = [], []
        for r in b.results or []:
            what, body = r["what"], r["request"]["body"]
            line: dict[str, Any] = {
                "id": f"batch_req_{uuid.uuid4().hex[:12]}",
                "custom_id": r["custom_id"],
            }
            if what == "missing":
                continue
            if what in ("expired", "cancelled"):
                code = "batch_expired" if what == "expired" else "batch_cancelled"
                err.append(
                    {
                        **line,
                        "response": None,
                        "error": {
                            "code": code,
                            "message": f"This request could not be executed ({code}).",
                        },
                    }
                )
                continue
            if what.startswith("error:"):
                status = int(what.split(":")[1])
                err.append(
                    {
                        **line,
                        "response": {
                            "status_code": status,
                            "request_id": f"req_{uuid.uuid4().hex[:12]}",
                            "body": {
                                "error": {
                                    "message": f"scripted {status}",
                                    "type": "server_error"
                                    if status >= 500
                                    else "invalid_request_error",
                                    "code": None,
                                }
                            },
                        },
                        "error": None,
                    }
                )
                continue
            text, u = self._answer(body, b.endpoint)
            legacy = b.endpoint.endswith("/completions") and "chat" not in b.endpoint
            choice = {"index": 0, "finish_reason": "stop", "logprobs": None}
            choice |= (
                {"text": text} if legacy else {"message": {"role": "assistant", "content": text}}
            )
            out.append(
                {
                    **line,
                    "response": {
                        "status_code": 200,
                        "request_id": f"req_{uuid.uuid4().hex[:12]}",
                        "body": {
                            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                            "object": "text_completion" if legacy else "chat.completion",
                            "created": int(time.time()),
                            "model": body.get("model"),
                            "choices": [choice],
                            "usage": {
                                "prompt_tokens": u["prompt"],
                                "completion_tokens": u["completion"],
                                "total_tokens": u["prompt"] + u["completion"],
                            },
                        },
                    },
                    "error": None,
                }
            )
        for lines, attr in ((out, "output_file_id"), (err, "error_file_id")):
            if lines:
                file_id = f"file-{uuid.uuid4().hex[:16]}"
                self.files[file_id] = "".join(json.dumps(x) + "\n" for x in lines).encode()
                setattr(b, attr, file_id)

    def openai_list(self) -> dict[str, Any]:
        data = [
            self.openai_batch(b)
            for b in reversed(list(self.batches.values()))
            if b.kind == "openai"
        ]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    # -- Anthropic -------------------------------------------------------------

    def anthropic_create(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests = body.get("requests") or []
        if self.bad_line is not None and self.bad_line <= len(requests):
            return 400, {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "message": f"requests.{self.bad_line - 1}.params.model: Field required",
                },
            }
        b = FakeBatch(f"msgbatch_{uuid.uuid4().hex[:16]}", "anthropic", requests, time.time())
        self._created(b)
        return 200, self.anthropic_batch(b)

    def anthropic_batch(self, b: FakeBatch) -> dict[str, Any]:
        self.status_calls += 1
        status = self._status(b)
        ended = status in ("completed", "cancelled")
        counts = {
            "processing": 0 if ended else len(b.requests),
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        if ended:
            for r in b.results or []:
                key = {
                    "ok": "succeeded",
                    "expired": "expired",
                    "cancelled": "canceled",
                    "missing": "errored",
                }.get(r["what"], "errored")
                counts[key] += 1
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": "ended"
            if ended
            else ("canceling" if b.cancelled_at else "in_progress"),
            "request_counts": counts,
            "ended_at": _iso(time.time()) if ended else None,
            "created_at": _iso(b.created),
            "expires_at": _iso(b.created + 86400),
            "archived_at": None,
            "cancel_initiated_at": _iso(b.cancelled_at),
            "results_url": f"{self.server.url}/v1/messages/batches/{b.id}/results"
            if ended
            else None,
        }

    def anthropic_results(self, b: FakeBatch) -> bytes:
        lines = []
        for r in b.results or []:
            what, params = r["what"], r["request"]["params"]
            if what == "missing":
                continue
            if what in ("expired", "cancelled"):
                result: dict[str, Any] = {"type": "expired" if what == "expired" else "canceled"}
            elif what.startswith("error:"):
                status = int(what.split(":")[1])
                kind = {
                    400: "invalid_request_error",
                    429: "rate_limit_error",
                    529: "overloaded_error",
                }.get(status, "api_error")
                result = {
                    "type": "errored",
                    "error": {
                        "type": "error",
                        "error": {"type": kind, "message": f"scripted {status}"},
                    },
                }
            else:
                text, u = self._answer(params, "messages")
                result = {
                    "type": "succeeded",
                    "message": {
                        "id": f"msg_{uuid.uuid4().hex[:12]}",
                        "type": "message",
                        "role": "assistant",
                        "model": params.get("model"),
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": u["prompt"],
                            "output_tokens": u["completion"],
                            "cache_read_input_tokens": 0,
                            "cache_creation_input_tokens": 0,
                        },
                    },
                }
            lines.append(json.dumps({"custom_id": r["custom_id"], "result": result}))
        return ("\n".join(lines) + "\n").encode()

    def anthropic_list(self) -> dict[str, Any]:
        data = [
            self.anthropic_batch(b)
            for b in reversed(list(self.batches.values()))
            if b.kind == "anthropic"
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    # -- routing ---------------------------------------------------------------

    def handle(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Any] | None:
        """(status, JSON body or bytes), or None when `path` is not a batch route."""
        parts = path.split("?")[0].rstrip("/").split("/")[1:]  # v1, ...
        if parts[:2] == ["v1", "files"]:
            if method == "POST" and len(parts) == 2:
                return 200, self.upload(headers, raw)
            if method == "GET" and len(parts) == 4 and parts[3] == "content":
                content = self.files.get(parts[2])
                return (
                    (200, content)
                    if content is not None
                    else (404, {"error": {"message": "no such file"}})
                )
        if parts[:2] == ["v1", "batches"]:
            if len(parts) == 2:
                if method == "POST":
                    return 200, self.openai_create(json.loads(raw))
                return 200, self.openai_list()
            b = self.batches.get(parts[2])
            if b is None:
                return 404, {
                    "error": {"message": f"no batch {parts[2]}", "type": "invalid_request_error"}
                }
            if len(parts) == 4 and parts[3] == "cancel":
                b.cancelled_at = b.cancelled_at or time.time()
            return 200, self.openai_batch(b)
        if parts[:3] == ["v1", "messages", "batches"]:
            if len(parts) == 3:
                if method == "POST":
                    return self.anthropic_create(json.loads(raw))
                return 200, self.anthropic_list()
            b = self.batches.get(parts[3])
            if b is None:
                return 404, {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "no such batch"},
                }
            if len(parts) == 5 and parts[4] == "results":
                return 200, self.anthropic_results(b)
            if len(parts) == 5 and parts[4] == "cancel":
                b.cancelled_at = b.cancelled_at or time.time()
            return 200, self.anthropic_batch(b)
        return None
