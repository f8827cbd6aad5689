"""What every admin page shares: the Jinja2 environment, the static folder, rendering with the
session's CSRF token, the login redirect, and security headers on admin responses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.admin_auth import AdminSession, LoginRequired
from api.errors import error_body

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")


def _ago(value: datetime | float | None) -> str:
    if value is None:
        return "–"
    when = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    seconds = (datetime.now(UTC) - when).total_seconds()
    if seconds < 60:
        return f"{max(seconds, 0):.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


templates.env.filters["ago"] = _ago
templates.env.filters["seconds"] = _seconds
templates.env.filters["when"] = _when


def render(
    request: Request, template: str, admin: AdminSession, status_code: int = 200, **context: Any
) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        template,
        {"admin": admin, "csrf_token": admin.csrf_token, "notice": request.query_params.get("notice"), **context},
        status_code=status_code,
    )


def content_security_policy(media_origin: str) -> str:
    media = f"'self' {media_origin}".strip()
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; "
        f"img-src 'self' data: {media}; media-src {media}; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )


class AdminHeadersMiddleware:
    """CSP, no framing, no referrer leaks and no caching on every ``/admin`` response."""

    def __init__(self, app: ASGIApp, media_origin: str = "") -> None:
        self.app = app
        self.csp = content_security_policy(media_origin).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith("/admin"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", self.csp),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                if not scope["path"].startswith("/admin/static"):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _login_required(request: Request, exc: LoginRequired) -> Response:
    if request.url.path.startswith("/admin"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/admin/login?next={quote(target)}", status_code=303)
    return JSONResponse(
        error_body(exc.code, exc.message, status=401), status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


def install_admin_handlers(app: FastAPI, *, media_origin: str = "") -> None:
    app.add_exception_handler(LoginRequired, _login_required)  # type: ignore[arg-type]
    app.add_middleware(AdminHeadersMiddleware, media_origin=media_origin)
