"""Serving a finished job's video or thumbnail (one rule for the client API and the dashboard), and
a job's input image (the dashboard's job page)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from fastapi import Response
from fastapi.responses import RedirectResponse, StreamingResponse

from jobs.errors import Conflict, Gone, NotFound
from jobs.models import Job
from jobs.states import JobStatus
from jobs.storage import Storage

Variant = Literal["video", "thumbnail"]
MEDIA_TYPES: dict[str, str] = {"video": "video/mp4", "thumbnail": "image/jpeg"}


def content_response(job: Job, variant: Variant, storage: Storage, presign_expiry_s: int) -> Response:
    """302 to a presigned URL where the store can sign (S3), else the bytes (local folder).

    409 until the job is completed; 410 once its results expired and were deleted.
    """
    if job.status != JobStatus.COMPLETED.value:
        raise Conflict(f"video {job.id} is {job.status}; content exists once it is completed", code="not_ready")
    object_key = job.video_key if variant == "video" else job.thumbnail_key
    if not object_key:
        raise Gone(f"the results of video {job.id} expired and were deleted", code="expired")
    url = storage.presigned_url(object_key, timedelta(seconds=presign_expiry_s))
    if url is not None:
        return RedirectResponse(url, status_code=302)
    return StreamingResponse(storage.open_stream(object_key), media_type=MEDIA_TYPES[variant])


def input_reference_response(job: Job, storage: Storage, presign_expiry_s: int) -> Response:
    """The job's fitted input image (PNG), as `content_response` serves results; 404 without one."""
    if not job.input_reference_key:
        raise NotFound(f"video {job.id} has no input image (or it expired with the results)", param="video_id")
    url = storage.presigned_url(job.input_reference_key, timedelta(seconds=presign_expiry_s))
    if url is not None:
        return RedirectResponse(url, status_code=302)
    return StreamingResponse(storage.open_stream(job.input_reference_key), media_type="image/png")
