"""Reading ``POST /v1/videos``: a JSON body, or ``multipart/form-data`` with the same fields, which is
what OpenAI's SDK sends (even with no file). The image-to-video ``input_reference`` arrives as a file
part (multipart) or a ``data:`` URL (JSON); it is decoded here and judged by the domain."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from api.errors import UnsupportedMediaType
from api.schemas import ImageUrlReference, VideoCreate
from jobs.errors import InvalidParameter
from jobs.validation import MAX_INPUT_REFERENCE_BYTES, InputReference

ACCEPTED_TYPES = ("application/json", "multipart/form-data")
MAX_FORM_FIELDS = 100
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,(?P<data>.*)$", re.DOTALL)
# As OpenAI's SDK writes them: `webhook_events[]` (a list, repeated), `input_reference[image_url]` (an
# object), `loras[][id]` + `loras[][scale]` (a list of objects: a repeated key starts the next object).
_NESTED_KEY = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<sub>[^\[\]]*)\]$")
_LIST_OF_OBJECTS_KEY = re.compile(r"^(?P<name>[^\[\]]+)\[\]\[(?P<sub>[^\[\]]+)\]$")


async def read_video_create(request: Request) -> tuple[VideoCreate, InputReference | None]:
    """The body as a validated ``VideoCreate`` and the decoded image, if one was sent."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        payload = await _json_payload(request)
    elif media_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
        try:
            payload = await _form_payload(form)
        finally:
            await form.close()
    else:
        sent = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
        raise UnsupportedMediaType(
            f"POST /v1/videos reads application/json or multipart/form-data (what OpenAI's SDK sends); got {sent}",
            param="Content-Type",
        )
    reference = payload.get("input_reference")
    try:
        body = VideoCreate.model_validate({k: v for k, v in payload.items() if not isinstance(v, InputReference)})
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    if isinstance(reference, InputReference):
        return body, reference
    if body.input_reference is None:
        return body, None
    given = body.input_reference
    return body, _from_data_url(given.image_url if isinstance(given, ImageUrlReference) else given)


async def _json_payload(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(await request.body())
    except ValueError:
        raise InvalidParameter("the request body is not valid JSON", param="body", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise InvalidParameter("the request body must be a JSON object", param="body")
    return payload


async def _form_payload(form: FormData) -> dict[str, Any]:
    """Form fields as the JSON body would have them: ``name[]`` (repeated) is a list, ``name[key]`` an
    object, ``name[][key]`` a list of objects, and the ``input_reference`` file part an ``InputReference``."""
    payload: dict[str, Any] = {}
    for key, value in form.multi_items():
        nested = _NESTED_KEY.match(key)
        in_list = _LIST_OF_OBJECTS_KEY.match(key)
        if in_list is not None and isinstance(value, str):
            items = payload.setdefault(in_list["name"], [])
            if not items or in_list["sub"] in items[-1]:
                items.append({})
            items[-1][in_list["sub"]] = value
        elif isinstance(value, UploadFile):
            if key != "input_reference":
                raise InvalidParameter(f"only input_reference may be a file, got a file for {key!r}", param=key)
            payload[key] = await _read_upload(value)
        elif nested is not None and nested["sub"] == "":
            payload.setdefault(nested["name"], []).append(value)
        elif nested is not None:
            payload.setdefault(nested["name"], {})[nested["sub"]] = value
        elif key in VideoCreate.model_fields and _is_list_field(key):
            payload.setdefault(key, []).append(value)
        elif key in payload:
            raise InvalidParameter(f"{key} was sent more than once", param=key)
        else:
            payload[key] = value
    return payload


def _is_list_field(name: str) -> bool:
    return "list" in str(VideoCreate.model_fields[name].annotation)


async def _read_upload(upload: UploadFile) -> InputReference:
    data = await upload.read(MAX_INPUT_REFERENCE_BYTES + 1)
    if len(data) > MAX_INPUT_REFERENCE_BYTES:
        raise InvalidParameter(
            f"input_reference is larger than {MAX_INPUT_REFERENCE_BYTES // 2**20} MiB", param="input_reference"
        )
    return InputReference(
        data=data, content_type=upload.content_type or "application/octet-stream", filename=upload.filename
    )


def _from_data_url(url: str) -> InputReference:
    match = _DATA_URL.match(url.strip())
    if match is None:
        raise InvalidParameter(
            "input_reference in JSON must be a base64 data: URL (data:image/png;base64,...); vidq fetches no "
            "remote URL. Or send the image as a multipart/form-data file part named input_reference.",
            param="input_reference",
        )
    try:
        data = base64.b64decode(match["data"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("input_reference: the data: URL is not valid base64", param="input_reference") from None
    if len(data) > MAX_INPUT_REFERENCE_BYTES:
        raise InvalidParameter(
            f"input_reference is larger than {MAX_INPUT_REFERENCE_BYTES // 2**20} MiB", param="input_reference"
        )
    return InputReference(data=data, content_type=match["type"] or "application/octet-stream")
