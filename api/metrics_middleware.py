"""Counts every HTTP request by route template and status (``vidq_http_requests_total``) and times
it (``vidq_http_request_duration_seconds``). Labels use the route's template
(``/v1/videos/{video_id}``), never the raw path, so job ids cannot blow up the series count;
requests that match no route share the label ``unmatched``."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import metrics

UNMATCHED = "unmatched"


class HttpMetricsMiddleware:
    """Pure ASGI, outermost, so it sees the status of every answer, error handlers' included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started becomes a 500
        timed = False

        async def send_and_observe(message: Message) -> None:
            nonlocal status, timed
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not timed:
                timed = True  # to the first body chunk: an event stream's lifetime is not its latency
                metrics.HTTP_SECONDS.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            route = _route(scope)
            if not timed:
                metrics.HTTP_SECONDS.labels(scope["method"], route).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(scope["method"], route, str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")  # set by the router on the same scope once a route matched
    return getattr(route, "path", None) or UNMATCHED
