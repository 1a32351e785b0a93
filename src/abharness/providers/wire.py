"""OpenAI's wire format spoken over aiohttp, for the OpenAI provider's ``transport:
direct``: one POST of the JSON body, the answer read as JSON or as server-sent events.

The official SDK builds each request through its own machinery (options copied,
headers merged, the URL parsed, an httpx request translated to aiohttp and the answer
back), 0.7-0.9 ms of CPU a call; a gateway serving hundreds of requests a second on
one core spends most of its time there (BENCHMARKS.md, `abharness serve`). This is
what is left of a call once that is gone: what goes on the wire and what comes back
are the same (the tests run both transports against the same servers), errors map
through the same `_http` functions. What the SDK adds and this does not: the
``OpenAI-Organization`` and ``OpenAI-Project`` headers from the environment, and the
``x-stainless-*`` telemetry headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from .. import __version__
from ..errors import CallError, OtherCallError
from ._http import error_from_body, transport_error

# what aiohttp raises when the connection, not the server, failed
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class Wire:
    """One aiohttp session for an endpoint, made on the loop that calls it."""

    def __init__(self, base_url: str, key: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": f"abharness/{__version__}",
        }
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # the endpoint's limits bound the connections; the runner owns timeouts
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def _send(self, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The response to a POST of `body`, its status checked: an error status raises
        the `CallError` its body and headers say."""
        url = self.base_url + path
        try:
            response = await self._open().post(
                url, data=json.dumps(body).encode(), headers=self.headers
            )
            if response.status < 400:
                return response
            async with response:
                raw = await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, url) from exc
        raise error_from_body(response.status, _json_or_text(raw), response.headers, url)

    async def post(
        self, path: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], Mapping[str, str]]:
        """The JSON answer to `body` and the response's headers."""
        response = await self._send(path, body)
        url = str(response.url)
        try:
            async with response:
                raw = await response.read()
        except _TRANSPORT_ERRORS as exc:
            raise transport_error(exc, url) from exc
        try:
            answer = json.loads(raw)
        except ValueError as exc:
            raise OtherCallError(f"JSONDecodeError: {exc} (from {url})") from exc
        if not isinstance(answer, dict):
            raise OtherCallError(f"the answer from {url} is not a JSON object")
        return answer, response.headers

    async def stream(self, path: str, body: dict[str, Any]) -> Events:
        """The server-sent events answering `body`; the status is checked before."""
        return Events(await self._send(path, body))

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Events:
    """A stream's chunks as dicts, until ``[DONE]`` or the end of the body. An error
    event raises (as the SDK's ``APIError`` does: `OtherCallError`); a connection that
    breaks raises what aiohttp raised, for the provider to call it a cut stream."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.headers: Mapping[str, str] = response.headers

    async def __aenter__(self) -> Events:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.response.release()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        event = None
        async for raw in self.response.content:
            line = raw.rstrip(b"\r\n")
            if not line:  # an event ends
                event = None
            elif line.startswith(b"event:"):
                event = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
                if data == b"[DONE]":
                    return
                chunk = json.loads(data)
                if event == "error" or (isinstance(chunk, dict) and "error" in chunk):
                    raise _stream_error(chunk)
                yield chunk
            # a comment (":...") or a field OpenAI does not send (id:, retry:): skipped


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _stream_error(chunk: Any) -> CallError:
    error = chunk.get("error") if isinstance(chunk, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return OtherCallError(f"APIError: {message or json.dumps(chunk)[:500]}")
