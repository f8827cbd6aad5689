"""Client-facing job operations: the plain functions behind the REST routes.

Every lookup is scoped to the owner's key, and another client's job is reported as missing (404),
never as forbidden, so ids cannot be probed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.capacity import check_fits_a_worker
from jobs.db import utcnow
from jobs.errors import Conflict, InvalidParameter, NotFound
from jobs.ids import new_job_id
from jobs.inputs import prepare_input_reference, store_input_reference
from jobs.loras import resolve_job_loras
from jobs.models import ApiKey, Job
from jobs.pages import SortOrder, keyset_page
from jobs.public import VideoPublic
from jobs.states import JobStatus, is_terminal
from jobs.storage import Storage, checkpoint_key
from jobs.validation import JobRequest, resolve_job_params
from jobs.webhooks.outbox import check_event_filter
from jobs.webhooks.targets import check_target
from jobs.workers import WorkerStatus

log = logging.getLogger(__name__)

MAX_PAGE = 100


def request_fingerprint(request: JobRequest) -> str:
    """A stable hash of what the client sent, for ``Idempotency-Key`` comparisons (an image by its hash)."""
    fields = asdict(request)
    for name in ("seconds", "input_reference", "loras", "flow_shift", "acceleration"):  # newer fields: absent ones
        if fields[name] in (None, ()):  # keep older jobs' hashes valid
            del fields[name]
    if request.input_reference is not None:
        reference = request.input_reference
        fields["input_reference"] = [hashlib.sha256(reference.data).hexdigest(), reference.content_type]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _find_idempotent(session: Session, owner: ApiKey, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.owner_id == owner.id, Job.idempotency_key == key))


def _replay(existing: Job, fingerprint: str) -> Job:
    if existing.request_hash != fingerprint:
        raise InvalidParameter(
            "this Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return existing


def create_job(
    *,
    session: Session,
    owner: ApiKey,
    request: JobRequest,
    idempotency_key: str | None = None,
    webhook_allowed_hosts: frozenset[str] = frozenset(),
    workers: Callable[[], list[WorkerStatus]] | None = None,
    heartbeat_timeout_s: float = 60.0,
    storage: Storage | None = None,
) -> tuple[Job, bool]:
    """:func:`submit_job` without the public view: (job, created)."""
    job, _, created = submit_job(
        session=session,
        owner=owner,
        request=request,
        idempotency_key=idempotency_key,
        webhook_allowed_hosts=webhook_allowed_hosts,
        workers=workers,
        heartbeat_timeout_s=heartbeat_timeout_s,
        storage=storage,
    )
    return job, created


def submit_job(
    *,
    session: Session,
    owner: ApiKey,
    request: JobRequest,
    idempotency_key: str | None = None,
    webhook_allowed_hosts: frozenset[str] = frozenset(),
    workers: Callable[[], list[WorkerStatus]] | None = None,
    heartbeat_timeout_s: float = 60.0,
    storage: Storage | None = None,
) -> tuple[Job, VideoPublic, bool]:
    """Validate, store and enqueue a job in one transaction. Returns (job, its public view, created).

    The view of a new job is the one its ``video.queued`` event recorded (queue position included),
    so answering costs no further query; an idempotent replay's is read now.

    The job's outbox row and its ``video.queued`` webhook deliveries are written in the same
    transaction; ``webhook_allowed_hosts`` exempts hosts from the webhook target check. An input
    image (``request.input_reference``) is checked and fitted to the job's size (``jobs.inputs``)
    and written to ``storage`` before the row; should the transaction not commit, the object is
    an orphan under ``inputs/<id>/`` (harmless, never served).
    """
    fingerprint = request_fingerprint(request)
    if idempotency_key is not None:
        existing = _find_idempotent(session, owner, idempotency_key)
        if existing is not None:
            return _replayed(session, existing, fingerprint)

    loras: list[dict[str, object]] = []
    if request.loras:  # the adapters' recommended settings fill what the request left out
        loras, recommended = resolve_job_loras(session=session, owner=owner, choices=request.loras, model=request.model)
        request = replace(
            request,
            **{
                name: value
                for name, value in recommended.__dict__.items()
                if value is not None and getattr(request, name) is None
            },
        )
    params = replace(resolve_job_params(request), loras=loras or None)
    if workers is not None:  # the fleet's declared GPU memory, for requests no GPU could hold
        check_fits_a_worker(params, workers, heartbeat_timeout_s=heartbeat_timeout_s)
    webhook_events = check_event_filter(request.webhook_events, param="webhook_events")
    if request.webhook_url is not None:
        check_target(request.webhook_url, allowed_hosts=webhook_allowed_hosts, param="webhook_url")
    elif webhook_events is not None:
        raise InvalidParameter("webhook_events needs a webhook_url", param="webhook_events")
    input_png = None
    if request.input_reference is not None:  # the model takes one: resolve_job_params checked that
        input_png = prepare_input_reference(request.input_reference, params.width, params.height)
        if storage is None:
            raise ValueError("create_job needs the object storage to keep an input_reference")
    job = Job(
        id=new_job_id(),
        owner_id=owner.id,
        **asdict(params),
        total_steps=params.num_inference_steps,
        idempotency_key=idempotency_key,
        request_hash=fingerprint,
        webhook_url=request.webhook_url,
        webhook_events=webhook_events,
        created_at=utcnow(),
    )
    if input_png is not None:
        assert storage is not None
        job.input_reference_key = store_input_reference(storage, job.id, input_png)
    try:
        event = lifecycle.create(session=session, job=job)  # inserts the row: a duplicate key fails here
    except IntegrityError:
        # Two requests raced with the same Idempotency-Key: the other one won, answer with its job.
        session.rollback()
        if job.input_reference_key:
            storage.delete(job.input_reference_key)  # type: ignore[union-attr]
        existing = _find_idempotent(session, owner, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return _replayed(session, existing, fingerprint)
    return job, VideoPublic.model_validate(event.data), True


def _replayed(session: Session, existing: Job, fingerprint: str) -> tuple[Job, VideoPublic, bool]:
    job = _replay(existing, fingerprint)
    return job, VideoPublic.read(session=session, job=job), False


def get_job(*, session: Session, owner: ApiKey, job_id: str, for_update: bool = False) -> Job:
    query = select(Job).where(Job.id == job_id, Job.owner_id == owner.id)
    if for_update:
        query = query.with_for_update()
    job = session.scalar(query)
    if job is None:
        raise NotFound(f"no video with id {job_id!r}", param="video_id")
    return job


def list_jobs(
    *,
    session: Session,
    owner: ApiKey,
    limit: int = 20,
    after: str | None = None,
    status: JobStatus | None = None,
    order: SortOrder = "desc",
) -> tuple[list[Job], bool]:
    """Newest first (``order="asc"``: oldest first); ``after`` is the last id of the previous page.
    Returns (page, has_more)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidParameter(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    query = select(Job).where(Job.owner_id == owner.id)
    if status is not None:
        query = query.where(Job.status == status.value)
    return keyset_page(session, query, Job.id, limit=limit, after=after, order=order)


def cancel_job(*, session: Session, owner: ApiKey, job_id: str) -> Job:
    """Cancel a queued or running job; a running job's worker notices within one step."""
    job = get_job(session=session, owner=owner, job_id=job_id, for_update=True)
    if job.status == JobStatus.CANCELLED.value:
        return job
    if is_terminal(job.status):
        raise Conflict(f"video {job_id} is already {job.status} and cannot be cancelled", code="not_cancellable")
    lifecycle.cancel(session=session, job=job)
    return job


def delete_job(*, session: Session, owner: ApiKey, job_id: str, storage: Storage) -> None:
    """Delete the job and its stored results. A running job is cancelled first (its worker stops)."""
    job = get_job(session=session, owner=owner, job_id=job_id, for_update=True)
    for key in (job.video_key, job.thumbnail_key, checkpoint_key(job.id), job.input_reference_key):
        if key:
            storage.delete(key)
    lifecycle.delete(session=session, job=job)
