"""Puts the job id of a request about one job (``/v1/videos/{id}/...``, ``/admin/jobs/{id}/...``)
in the logging context, so every record the request causes carries it (``jobs.logs``)."""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from jobs.logs import job_id_var

_JOB_PATH = re.compile(r"^/(?:v1/videos|admin/jobs)/(video_[A-Za-z0-9]+)")


class JobIdMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so the context variable reaches the route's thread."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _JOB_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        token = job_id_var.set(match.group(1))
        try:
            await self.app(scope, receive, send)
        finally:
            job_id_var.reset(token)
