"""The API's edge: what every HTTP request passes before any route parses it.

Three checks, in one pure ASGI middleware (no buffering, no thread hop):

- **Body size** (413): a ``Content-Length`` over the limit is refused before a byte of the body is
  read; a chunked body is counted as it streams and cut off at the limit. Authentication comes
  later (a route's dependency), so without this an anonymous client could make the API read and
  parse any amount. LoRA uploads have their own, larger limit (``VIDQ_LORA_MAX_UPLOAD_MB``).
- **Text in the URL**: a path or query string that decodes to a NUL or to invalid UTF-8 is a 404
  (path: no such resource can exist) or a 422 naming the parameter (query), never a database error.
- **Concurrency** (503 + ``Retry-After``): at most ``VIDQ_API_MAX_CONCURRENCY`` requests run at once
  in this process; one more is answered at once instead of queueing for a pool connection until it
  times out. Event streams (``.../events`` and the dashboard's ``/admin/jobs/live``) are not
  counted: they hold no database connection while open, and ``VIDQ_MAX_STREAMS_PER_KEY`` bounds
  them instead.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.balance import Balancer
from api.errors import error_body
from jobs.text import is_storable_text

OVERLOAD_RETRY_AFTER_S = 1  # a full process frees a slot within a request's time
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")  # probes answer even when the process is full
ADMIN_LIVE_PATH = "/admin/jobs/live"  # the dashboard's event stream: capped per key like the others


class BodyTooLarge(Exception):
    """Raised out of ``receive`` when a streamed body passes the limit."""


def _decodes(raw: bytes) -> bool:
    try:
        return is_storable_text(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def bad_query_param(query: bytes) -> str | None:
    """The name of the first query parameter whose name or value is not storable text, "query"
    when the name itself is unreadable; None when the query string is fine."""
    if not query:
        return None
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        name_raw = unquote_to_bytes(name.replace(b"+", b" "))
        value_raw = unquote_to_bytes(value.replace(b"+", b" "))
        if not _decodes(name_raw):
            return "query"
        if not _decodes(value_raw):
            return name_raw.decode()
    return None


def bad_path(scope: Scope) -> bool:
    raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
    return not _decodes(unquote_to_bytes(raw))


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    raw_headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        upload_max_bytes: int,
        max_concurrency: int,
        balancer: Balancer | None = None,
    ) -> None:
        self.app = app
        self.balancer = balancer  # several API processes: see api.balance
        self.max_body_bytes = max_body_bytes
        self.upload_max_bytes = upload_max_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0  # one event loop per process: no lock needed

    def _limit_for(self, scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == "/v1/loras":
            return max(self.upload_max_bytes, self.max_body_bytes)
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if bad_path(scope):
            await _answer(send, 404, error_body("not_found", "no such resource", status=404))
            return
        param = bad_query_param(scope.get("query_string", b""))
        if param is not None:
            message = f"{param} must not contain NUL characters or invalid UTF-8"
            await _answer(send, 422, error_body("invalid_parameter", message, param, status=422))
            return
        limit = self._limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        path = scope.get("path", "")
        counted = path not in UNLIMITED_PATHS and not path.endswith("/events") and path != ADMIN_LIVE_PATH
        if counted and self.in_flight >= self.max_concurrency:
            await _answer(
                send,
                503,
                error_body("overloaded", "the server is at its concurrency limit; retry shortly", status=503),
                {"Retry-After": str(OVERLOAD_RETRY_AFTER_S)},
            )
            return
        received = 0
        started = False
        over_limit = False

        async def limited_receive() -> Message:
            nonlocal received, over_limit
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over_limit = True
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            # Whatever a framework layer made of the cut-off body (a 400 "error parsing the body", a
            # 500), the client is told the truth: 413.
            nonlocal started
            if over_limit:
                if not started:
                    started = True
                    await _too_large(send, limit)
                return
            if message["type"] == "http.response.start":
                started = True
                if counted and self.balancer is not None and self.balancer.should_shed(self.in_flight):
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if counted:
            self.in_flight += 1
            if self.balancer is not None:
                self.balancer.changed(self.in_flight)
        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _too_large(send, limit)
        except Exception:
            if not over_limit:
                raise
            if not started:
                await _too_large(send, limit)
        finally:
            if counted:
                self.in_flight -= 1
                if self.balancer is not None:
                    self.balancer.changed(self.in_flight)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send: Send, limit: int) -> None:
    mb = limit / 2**20
    message = f"the request body is larger than {mb:g} MB (VIDQ_MAX_REQUEST_BODY_MB)"
    await _answer(send, 413, error_body("request_too_large", message, "body", status=413))
