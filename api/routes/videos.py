"""``/v1/videos``: submit, read, list, download, cancel and delete generation jobs."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from api.deps import CurrentKey, SessionDep, SettingsDep, StateDep, StorageDep
from api.schemas import VideoCreate, VideoDeleted, VideoList, VideoPublic
from jobs import crud
from jobs.errors import Conflict, Gone
from jobs.public import queue_position
from jobs.states import JobStatus

router = APIRouter(prefix="/v1/videos", tags=["videos"])


def _public(session, job) -> VideoPublic:  # type: ignore[no-untyped-def]
    return VideoPublic.from_job(job, queue_position=queue_position(session=session, job=job))


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=VideoPublic)
def create_video(
    body: VideoCreate,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> VideoPublic:
    job, created = crud.create_job(
        session=session,
        owner=key,
        request=body.to_request(settings.default_model),
        idempotency_key=idempotency_key,
        webhook_allowed_hosts=settings.webhook_allowed_host_set,
        workers=state.workers.list(),
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
    )
    session.commit()
    if created:
        state.relay_now()
        session.refresh(job)
    return _public(session, job)


@router.get("", response_model=VideoList)
def list_videos(
    key: CurrentKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 20,
    after: str | None = None,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> VideoList:
    jobs, has_more = crud.list_jobs(session=session, owner=key, limit=limit, after=after, status=status_filter)
    data = [_public(session, job) for job in jobs]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/{video_id}", response_model=VideoPublic)
def retrieve_video(video_id: str, key: CurrentKey, session: SessionDep) -> VideoPublic:
    return _public(session, crud.get_job(session=session, owner=key, job_id=video_id))


@router.get("/{video_id}/content", response_model=None, responses={302: {"description": "presigned URL"}})
def download_video(
    video_id: str,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
    variant: Literal["video", "thumbnail"] = "video",
) -> Response:
    job = crud.get_job(session=session, owner=key, job_id=video_id)
    if job.status != JobStatus.COMPLETED.value:
        raise Conflict(f"video {video_id} is {job.status}; content exists once it is completed", code="not_ready")
    object_key = job.video_key if variant == "video" else job.thumbnail_key
    if not object_key:
        raise Gone(f"the results of video {video_id} expired and were deleted", code="expired")
    url = storage.presigned_url(object_key, timedelta(seconds=settings.presign_expiry_s))
    if url is not None:
        return RedirectResponse(url, status_code=status.HTTP_302_FOUND)
    media_type = "video/mp4" if variant == "video" else "image/jpeg"
    return StreamingResponse(storage.open_stream(object_key), media_type=media_type)


@router.post("/{video_id}/cancel", response_model=VideoPublic)
def cancel_video(video_id: str, key: CurrentKey, session: SessionDep, state: StateDep) -> VideoPublic:
    job = crud.cancel_job(session=session, owner=key, job_id=video_id)
    session.commit()
    state.events.publish(job.id, {"type": "status", "id": job.id, "status": job.status})
    state.relay_now()
    return _public(session, job)


@router.delete("/{video_id}", response_model=VideoDeleted)
def delete_video(video_id: str, key: CurrentKey, session: SessionDep, storage: StorageDep) -> VideoDeleted:
    crud.delete_job(session=session, owner=key, job_id=video_id, storage=storage)
    session.commit()
    return VideoDeleted(id=video_id)
