"""The OpenAPI document: the real error body on every route and both bodies of ``POST /v1/videos``.

Routes declare the statuses they answer with :func:`errors`; :func:`install_openapi` then replaces
FastAPI's default 422 (``HTTPValidationError``, a shape vidq never sends) with ``ErrorResponse``
everywhere, so the schema cannot document a body the API does not answer with.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from api.errors import ErrorResponse
from api.schemas import VideoCreate, VideoCreateForm

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (an unreadable multipart body).",
    401: "Missing, unknown or revoked API key.",
    403: "The key lacks the rights this needs.",
    404: "No such object for this key (another client's objects are missing too), or an endpoint vidq does not "
    "support (`unsupported_endpoint`).",
    409: "The object is not in a state that allows this.",
    410: "The results expired and were deleted.",
    415: "A request body vidq does not read; the message names the accepted content types.",
    422: "A request field is invalid; `param` names it.",
    413: "An upload over its size limit; `param` names the file field.",
    429: "A per-key limit is reached (open event streams); close one and retry.",
    503: "A dependency is unreachable (`param` names it), or the server is at its concurrency limit "
    "(`overloaded`); retry after `Retry-After` seconds.",
}
ERROR_REF = "#/components/schemas/ErrorResponse"


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for the error statuses a route answers with, all in the one error shape."""
    return {status: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


VIDEO_CREATE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/VideoCreate"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/VideoCreateForm"}},
        },
    }
}


def _can_fail_validation(operation: dict[str, Any]) -> bool:
    """Whether FastAPI may answer 422 before the route runs: a body, or a parameter that is not a plain
    string in the path (a string path segment always validates)."""
    if "requestBody" in operation:
        return True
    return any(
        p.get("in") != "path" or p.get("schema", {}).get("type") != "string" or len(p["schema"]) > 2
        for p in operation.get("parameters", [])
    )


def _error_schema_everywhere(schema: dict[str, Any]) -> None:
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            default_422 = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
            if not default_422.get("$ref", "").endswith("/HTTPValidationError"):
                continue
            if _can_fail_validation(operation):
                responses["422"] = {
                    "description": ERROR_DESCRIPTIONS[422],
                    "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
                }
            else:
                del responses["422"]
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, description=app.description, routes=app.routes
    )
    _, definitions = models_json_schema(
        [(VideoCreate, "validation"), (VideoCreateForm, "validation"), (ErrorResponse, "validation")],
        ref_template="#/components/schemas/{model}",
    )
    schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions.get("$defs", {}))
    _error_schema_everywhere(schema)
    return schema


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
