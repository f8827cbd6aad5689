"""``GET /v1/videos/{id}/events``: a job's progress as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse

from api.deps import CallKey, CallSessionDep, StateDep
from api.openapi import errors
from api.streams import bounded
from jobs import crud
from jobs.live import LiveEvent, job_events

router = APIRouter(prefix="/v1/videos", tags=["videos"])

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event through as it comes
}


def sse_frame(item: LiveEvent | None) -> str:
    """One SSE frame. State changes carry their event sequence number as ``id``, so a reconnecting
    client's ``Last-Event-ID`` resumes after them; progress frames carry none (the browser keeps the
    last id), and a resumed stream sends the current progress instead of the missed steps."""
    if item is None:
        return ": heartbeat\n\n"  # a comment line: keeps proxies from closing an idle stream
    data = json.dumps(item.data, separators=(",", ":"))
    frame_id = f"id: {item.id}\n" if item.id is not None else ""
    return f"{frame_id}event: {item.event}\ndata: {data}\n\n"


@router.get(
    "/{video_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "state, status and progress events"},
        **errors(401, 404, 429),
    },
)
def stream_video_events(
    video_id: str,
    key: CallKey,
    session: CallSessionDep,
    state: StateDep,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
) -> StreamingResponse:
    """The current state first, then every status change and step; the stream ends after a final status.

    A key may hold `VIDQ_MAX_STREAMS_PER_KEY` streams open at once (429 past that), and a stream
    ends after `VIDQ_STREAM_MAX_LIFETIME_S`: reconnect with `Last-Event-ID` to resume where it stopped.

    Each event's `data` is a JSON object with `status` (and, for steps, `step`, `total_steps`,
    `stage`, `percent`, `elapsed_s`, `eta_seconds`). State and status events carry the job's event
    number as their SSE `id`: reconnect with `Last-Event-ID` to get every state change after it
    exactly once, then the current progress, then the live stream.
    """
    crud.get_job(session=session, owner=key, job_id=video_id)  # 404 for a missing or foreign job
    owner_id = key.id
    settings = state.settings
    state.streams.acquire(owner_id, settings.max_streams_per_key)  # 429 past the cap

    async def frames() -> AsyncIterator[str]:
        with state.streams.held(owner_id):  # released however the stream ends (client gone included)
            events = job_events(
                video_id,
                owner_id=owner_id,
                session_factory=state.session_factory,
                redis_url=settings.redis_url,
                heartbeat_s=settings.sse_heartbeat_s,
                last_event_id=last_event_id,
            )
            async for item in bounded(events, lifetime_s=settings.stream_max_lifetime_s):
                yield sse_frame(item)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
