"""``/v1/videos``: submit, read, list, download, cancel and delete generation jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response, status
from sqlalchemy.orm import Session

from api.content import Variant, content_response
from api.deps import CallerDep, CurrentKey, SessionDep, SettingsDep, StorageDep, in_thread
from api.openapi import VIDEO_CREATE_BODY, errors
from api.schemas import VideoCreate, VideoDeleted, VideoList, VideoPublic
from api.video_body import read_video_create
from jobs import crud
from jobs.models import Job
from jobs.pages import SortOrder
from jobs.public import poll_after_ms, queue_position, queue_positions
from jobs.states import JobStatus
from jobs.validation import InputReference

router = APIRouter(prefix="/v1/videos", tags=["videos"], responses=errors(401))

POLL_AFTER_HEADER = "openai-poll-after-ms"
OrderQuery = Annotated[SortOrder, Query(description="`desc`: newest first (the default); `asc`: oldest first.")]
VideoCreateInput = Annotated[tuple[VideoCreate, InputReference | None], Depends(read_video_create)]


def _public(
    session: Session, job: Job, response: Response | None = None, *, positions: dict[str, int] | None = None
) -> VideoPublic:
    """The job as clients see it; on a job still running, the header that tells OpenAI's SDK when to
    poll again. ``positions``: the page's queue positions, read at once (``queue_positions``)."""
    if response is not None:
        _poll_header(job, response)
    position = positions.get(job.id) if positions is not None else queue_position(session=session, job=job)
    return VideoPublic.from_job(job, queue_position=position)


def _poll_header(job: Job, response: Response) -> None:
    """On a job still running, the header that tells OpenAI's SDK when to poll again."""
    wait_ms = poll_after_ms(job)
    if wait_ms is not None:
        response.headers[POLL_AFTER_HEADER] = str(wait_ms)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=VideoPublic,
    openapi_extra=VIDEO_CREATE_BODY,
    responses=errors(400, 415, 422),
)
@in_thread
def create_video(
    create: VideoCreateInput,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> VideoPublic:
    """Queue a video. The body is JSON or multipart/form-data (OpenAI's SDK) with the same fields."""
    body, input_reference = create
    session, settings, state = caller.session, caller.settings, caller.state
    job, view, _ = crud.submit_job(
        session=session,
        owner=caller.key,
        request=body.to_request(settings.default_model, input_reference),
        idempotency_key=idempotency_key,
        webhook_allowed_hosts=settings.webhook_allowed_host_set,
        workers=state.workers.list,
        heartbeat_timeout_s=settings.heartbeat_timeout_s,
        storage=state.storage,
    )
    session.commit()  # the relay fans the new job out right after this commit (jobs.relay)
    _poll_header(job, response)
    return view


@router.get("", response_model=VideoList, responses=errors(422))
@in_thread
def list_videos(
    key: CurrentKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=crud.MAX_PAGE)] = 20,
    after: str | None = None,
    order: OrderQuery = "desc",
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
) -> VideoList:
    jobs, has_more = crud.list_jobs(
        session=session, owner=key, limit=limit, after=after, status=status_filter, order=order
    )
    positions = queue_positions(session=session, jobs=jobs)
    data = [_public(session, job, positions=positions) for job in jobs]
    return VideoList(
        data=data,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
        has_more=has_more,
    )


@router.get("/{video_id}", response_model=VideoPublic, responses=errors(404))
@in_thread
def retrieve_video(video_id: str, caller: CallerDep, response: Response) -> VideoPublic:
    """The job; while it is queued or running, `openai-poll-after-ms` says when to look again (from its ETA)."""
    session = caller.session
    return _public(session, crud.get_job(session=session, owner=caller.key, job_id=video_id), response)


@router.get(
    "/{video_id}/content",
    response_model=None,
    responses={
        200: {
            "description": "The bytes (embedded mode, local storage).",
            "content": {"video/mp4": {}, "image/jpeg": {}},
        },
        302: {"description": "A redirect to a presigned URL of the object store."},
        **errors(404, 409, 410, 422),
    },
)
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


@router.post("/{video_id}/cancel", response_model=VideoPublic, responses=errors(404, 409))
@in_thread
def cancel_video(video_id: str, key: CurrentKey, session: SessionDep) -> VideoPublic:
    job = crud.cancel_job(session=session, owner=key, job_id=video_id)
    session.commit()
    return _public(session, job)


@router.delete("/{video_id}", response_model=VideoDeleted, responses=errors(404))
@in_thread
def delete_video(video_id: str, key: CurrentKey, session: SessionDep, storage: StorageDep) -> VideoDeleted:
    crud.delete_job(session=session, owner=key, job_id=video_id, storage=storage)
    session.commit()
    return VideoDeleted(id=video_id)
