"""``/v1/videos``: submit, read, list, download, cancel and delete generation jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from api.content import Variant, content_response
from api.deps import CurrentKey, SessionDep, SettingsDep, StateDep, StorageDep
from api.schemas import VideoCreate, VideoDeleted, VideoList, VideoPublic
from jobs import crud
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
        workers=state.workers.list,
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
    variant: Variant = "video",
) -> Response:
    job = crud.get_job(session=session, owner=key, job_id=video_id)
    return content_response(job, variant, storage, settings.presign_expiry_s)


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
