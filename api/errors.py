"""One error shape for every response: ``{"error": {"code", "message", "param", "type"}}``.

``code`` is vidq's machine-readable reason (carried by the domain exception); ``type`` is OpenAI's
coarse class of error (``e.type`` in its SDK), decided by the HTTP status in one table here.
"""

from __future__ import annotations

import logging

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.db import is_database_outage
from jobs.errors import (
    Conflict,
    DependencyUnavailable,
    DomainError,
    Forbidden,
    Gone,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    TooManyRequests,
    Unauthenticated,
)

log = logging.getLogger(__name__)


class UnsupportedMediaType(DomainError):
    """A request body in a format the route does not read (HTTP 415)."""

    code = "unsupported_media_type"


RETRY_AFTER_S = 5  # what a 503 asks clients to wait: a restarting database or broker is back in seconds

STATUS_BY_ERROR: dict[type[DomainError], int] = {
    InvalidParameter: 422,
    NotFound: 404,
    Conflict: 409,
    Gone: 410,
    Unauthenticated: 401,
    Forbidden: 403,
    UnsupportedMediaType: 415,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
}

# OpenAI's error types by status; anything else in 4xx is an invalid request, 5xx a server error.
ERROR_TYPE_BY_STATUS: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. `invalid_parameter`, `not_found`, `not_ready`.")
    message: str = Field(description="What went wrong, for a person.")
    param: str | None = Field(description="The request field at fault, when there is one.")
    type: str = Field(
        description="OpenAI's error class: `invalid_request_error`, `authentication_error`, `permission_error`, "
        "`not_found_error`, `conflict_error`, `rate_limit_error` or `server_error`."
    )


class ErrorResponse(BaseModel):
    """The body of every error vidq answers."""

    error: ErrorDetail


def error_body(code: str, message: str, param: str | None = None, *, status: int) -> dict[str, dict[str, str | None]]:
    return {"error": {"code": code, "message": message, "param": param, "type": error_type(status)}}


def status_of(exc: DomainError) -> int:
    return next((s for cls, s in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 400)


def _param_from_loc(loc: tuple[object, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


async def _domain_error(_: Request, exc: DomainError) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(error_body(exc.code, exc.message, exc.param, status=status), status, headers=headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body("invalid_json", "the request body is not valid JSON", "body", status=422), 422)
    param = _param_from_loc(tuple(first.get("loc", ())))
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    return JSONResponse(error_body("invalid_parameter", message, param, status=422), status_code=422)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(code, str(exc.detail), status=exc.status_code), status_code=exc.status_code, headers=exc.headers
    )


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(error_body("internal_error", "internal server error", status=500), status_code=500)


def _unavailable(dependency: str, exc: Exception) -> JSONResponse:
    log.warning("%s unreachable: %s: %s", dependency, type(exc).__name__, exc)
    return JSONResponse(
        error_body(
            f"{dependency}_unavailable", f"the {dependency} is unreachable; retry shortly", dependency, status=503
        ),
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _dependency_unavailable(_: Request, exc: DependencyUnavailable) -> JSONResponse:
    return _unavailable(exc.dependency, exc)


def _unstorable_text(exc: Exception) -> bool:
    """A value the database driver could not take: a NUL in text, a lone surrogate, a number out
    of its column's range. Input checks (jobs.text) stop these first; this is the net behind them."""
    if isinstance(exc, UnicodeEncodeError):
        return True
    if isinstance(exc, sa_exc.DataError):
        return True
    return isinstance(exc, sa_exc.StatementError) and isinstance(exc.orig, UnicodeEncodeError)


def _invalid_value() -> JSONResponse:
    message = "a value in the request cannot be stored (NUL character, invalid UTF-8 or a number out of range)"
    return JSONResponse(error_body("invalid_parameter", message, status=422), status_code=422)


async def _encode_error(_: Request, exc: Exception) -> JSONResponse:
    return _invalid_value()


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if _unstorable_text(exc):
        log.warning("refused a value the database cannot store: %s", type(exc).__name__)
        return _invalid_value()
    # Handled here rather than by the catch-all: Starlette re-raises what reaches the catch-all after
    # answering, and the server then drops the client's kept-alive connection.
    if is_database_outage(exc):
        return _unavailable("database", exc)
    return await _unhandled(request, exc)


async def _broker_error(_: Request, exc: Exception) -> JSONResponse:
    return _unavailable("broker", exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(DependencyUnavailable, _dependency_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(sa_exc.DBAPIError, _database_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_error)
    app.add_exception_handler(sa_exc.StatementError, _database_error)
    app.add_exception_handler(UnicodeEncodeError, _encode_error)
    app.add_exception_handler(kombu.exceptions.OperationalError, _broker_error)
    app.add_exception_handler(redis.ConnectionError, _broker_error)
    app.add_exception_handler(redis.TimeoutError, _broker_error)
    app.add_exception_handler(Exception, _unhandled)
