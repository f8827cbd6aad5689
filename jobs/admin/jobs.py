"""Finding jobs across every client (filters, sorting, cursor pages) and acting on many at once.

Every status change goes through ``jobs.lifecycle`` (so the state machine decides and the change
is recorded as an event the relay fans out), in the caller's transaction.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from jobs import lifecycle
from jobs.errors import InvalidParameter, NotFound
from jobs.models import Job
from jobs.states import JobStatus, is_terminal
from jobs.text import is_storable_text

SORT_COLUMNS = {"created": Job.id, "model": Job.model, "status": Job.status, "attempts": Job.attempts}
MAX_BULK = 1000  # a filtered bulk action touches at most this many jobs per request


@dataclass(frozen=True)
class JobFilter:
    status: list[str] = field(default_factory=list)
    model: str | None = None
    owner_id: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    prompt: str | None = None

    def conditions(self) -> list[Any]:
        conds: list[Any] = []
        if self.status:
            conds.append(Job.status.in_(self.status))
        if self.model:
            conds.append(Job.model == self.model)
        if self.owner_id is not None:
            conds.append(Job.owner_id == self.owner_id)
        if self.created_from is not None:
            conds.append(Job.created_at >= self.created_from)
        if self.created_to is not None:
            conds.append(Job.created_at < self.created_to)
        if self.prompt:
            escaped = self.prompt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conds.append(Job.prompt.ilike(f"%{escaped}%", escape="\\"))
        return conds


def encode_cursor(value: Any, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([value, job_id]).encode()).decode().rstrip("=")


# The type a cursor's sort value must have for each sort column: a forged cursor with another type
# would reach the database as a comparison it refuses (a 500), so it is refused here as a 422.
CURSOR_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "created": (str,),
    "model": (str,),
    "status": (str,),
    "attempts": (int,),
}


def decode_cursor(cursor: str, sort: str = "created") -> tuple[Any, str]:
    try:
        value, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError) as exc:
        raise InvalidParameter("malformed cursor", param="cursor") from exc
    wanted = CURSOR_VALUE_TYPES.get(sort, (str,))
    if not isinstance(job_id, str) or not isinstance(value, wanted) or isinstance(value, bool):
        raise InvalidParameter("malformed cursor", param="cursor")
    if (isinstance(value, str) and not is_storable_text(value)) or not is_storable_text(job_id):
        raise InvalidParameter("malformed cursor", param="cursor")
    if isinstance(value, int) and not -(2**31) <= value < 2**31:
        raise InvalidParameter("malformed cursor", param="cursor")
    return value, job_id


@dataclass
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def search_jobs(
    *,
    session: Session,
    where: JobFilter,
    sort: str = "created",
    desc: bool = True,
    cursor: str | None = None,
    limit: int = 50,
) -> JobPage:
    """One page of jobs; keyset pagination on (sort column, id), so pages stay stable while jobs arrive."""
    if sort not in SORT_COLUMNS:
        raise InvalidParameter(f"sort must be one of {', '.join(SORT_COLUMNS)}", param="sort")
    column = SORT_COLUMNS[sort]
    query = select(Job).where(*where.conditions())
    if cursor:
        value, last_id = decode_cursor(cursor, sort)
        if column is Job.id:
            query = query.where(Job.id < last_id if desc else Job.id > last_id)
        elif desc:
            query = query.where(or_(column < value, and_(column == value, Job.id < last_id)))
        else:
            query = query.where(or_(column > value, and_(column == value, Job.id > last_id)))
    order = [column.desc(), Job.id.desc()] if desc else [column.asc(), Job.id.asc()]
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    if more:
        last = page[-1]
        next_cursor = encode_cursor(getattr(last, column.key), last.id)
    return JobPage(jobs=page, next_cursor=next_cursor)


def get_any_job(*, session: Session, job_id: str, for_update: bool = False) -> Job:
    query = select(Job).where(Job.id == job_id)
    if for_update:
        query = query.with_for_update()
    job = session.scalar(query)
    if job is None:
        raise NotFound(f"no video with id {job_id!r}", param="video_id")
    return job


def _lock_jobs(session: Session, ids: list[str] | None, where: JobFilter | None) -> list[Job]:
    query = select(Job)
    if ids is not None:
        query = query.where(Job.id.in_(ids[:MAX_BULK]))
    elif where is not None:
        query = query.where(*where.conditions())
    else:
        return []
    return list(session.scalars(query.order_by(Job.id).limit(MAX_BULK).with_for_update()))


@dataclass
class BulkResult:
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not in a state the action applies to


def cancel_jobs(*, session: Session, ids: list[str] | None = None, where: JobFilter | None = None) -> BulkResult:
    """Cancel the queued and running jobs among ``ids`` (or matching ``where``); a running job's worker
    stops within one step. Finished jobs are skipped."""
    result = BulkResult()
    for job in _lock_jobs(session, ids, where):
        if is_terminal(job.status):
            result.skipped.append(job.id)
            continue
        lifecycle.cancel(session=session, job=job)
        result.changed.append(job.id)
    return result


def retry_jobs(*, session: Session, ids: list[str] | None = None, where: JobFilter | None = None) -> BulkResult:
    """Put failed jobs back in the queue (failed → queued) with a new dispatch message; attempts are kept.
    Jobs in any other status are skipped (the state machine allows a retry of a failed job only)."""
    result = BulkResult()
    for job in _lock_jobs(session, ids, where):
        if job.status != JobStatus.FAILED.value:
            result.skipped.append(job.id)
            continue
        lifecycle.requeue(session=session, job=job)  # clears the error; the relay publishes it
        result.changed.append(job.id)
    return result


def dead_letters(*, session: Session, limit: int = 100, cursor: str | None = None) -> JobPage:
    """Jobs that failed for good: no attempt is scheduled for a failed job, so every one is here
    until it is requeued (or deleted)."""
    return search_jobs(session=session, where=JobFilter(status=[JobStatus.FAILED.value]), cursor=cursor, limit=limit)
