"""Calls of OpenAI's API that vidq does not implement: a 404 with code ``unsupported_endpoint`` naming
what is missing, instead of a bare 404 or a misleading 405 from a neighbouring route."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

from fastapi import APIRouter

from api.openapi import errors
from jobs.errors import NotFound

router = APIRouter(tags=["not supported"], responses=errors(404))
_PARAM = re.compile(r"{(\w+)}")

# (method, path, what is not supported, what to do instead)
UNSUPPORTED: list[tuple[str, str, str, str]] = [
    ("POST", "/v1/videos/{video_id}/remix", "remixing a video", "create a new video with a new prompt"),
    ("POST", "/v1/videos/edits", "editing a video", "create a new video with a new prompt"),
    ("POST", "/v1/videos/extensions", "extending a video", "create a longer video (`seconds`)"),
    ("POST", "/v1/videos/characters", "video characters", "describe the character in the prompt"),
    ("GET", "/v1/videos/characters/{character_id}", "video characters", "describe the character in the prompt"),
    (
        "POST",
        "/v1/webhook_endpoints/{webhook_endpoint_id}",
        "updating a webhook endpoint",
        "delete it and create a new one",
    ),
    (
        "POST",
        "/v1/webhook_endpoints/{webhook_endpoint_id}/test",
        "test deliveries",
        "replay a real delivery with POST /v1/videos/{id}/webhook_deliveries/{delivery_id}/redeliver",
    ),
]


def _refuse(path: str, what: str, instead: str) -> Callable[..., None]:
    """The route function: it takes the path's parameters (so the OpenAPI schema declares them, and
    clients and fuzzers see a well-formed operation) and refuses whatever they are."""

    def endpoint(**_path_params: str) -> None:
        raise NotFound(f"vidq does not support {what}; {instead}", code="unsupported_endpoint")

    endpoint.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str) for name in _PARAM.findall(path)]
    )
    return endpoint


for method, path, what, instead in UNSUPPORTED:
    router.add_api_route(
        path,
        _refuse(path, what, instead),
        methods=[method],
        summary=f"Not supported: {what}",
        description=f"Always 404 `unsupported_endpoint`: vidq does not support {what}; {instead}.",
        operation_id="unsupported_" + re.sub(r"\W+", "_", f"{method} {path}").strip("_").lower(),
        status_code=404,
        response_model=None,
    )
