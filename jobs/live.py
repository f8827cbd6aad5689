"""A job's live event stream: every state change exactly once, in order, and its steps as they happen.

State changes come from the ``job_events`` table (``jobs.lifecycle`` appends one per change; its
``seq`` is the SSE event id); the bus (Redis pub/sub, or the in-process bus in embedded mode) only
says when to look, and carries each denoising step and stage (`ProgressEvent`), which are not
stored. So a stream that resumes with ``Last-Event-ID: n`` first replays the stored events after
``n``, then the job's current progress as a snapshot, then continues live; a live message lost or
reordered costs nothing, because every status message (and every heartbeat) reads the events after
the last one sent from the table. Redis is read through the process's one shared pub/sub
connection (``jobs.live_hub``); if it cannot be reached, the table and the row are polled.

The subscription opens before the first read, so nothing falls between the two. Items are
``LiveEvent(event, data, id)`` — ``id`` set for state changes only — or ``None`` for a heartbeat;
the stream ends after a terminal status (or when the job is deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import session_scope
from jobs.events import LOCAL_EVENTS, LocalSubscription, ProgressEvent, StatusEvent, parse_live_message
from jobs.live_hub import HubSubscription, hub_for
from jobs.models import Job, JobEvent
from jobs.public import VideoPublic
from jobs.states import JobStatus, is_terminal
from spec.stages import Stage

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
Reader = Callable[[int | None], "JobView"]  # read_view for one job, after a sequence number
_STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}


@dataclass(frozen=True)
class LiveEvent:
    event: str  # "state" (the first, without Last-Event-ID), "status" or "progress"
    data: dict[str, Any]
    id: int | None = None  # the job's event sequence number (state and status events)


@dataclass
class JobView:
    """What one read of the database shows: the job (None once deleted), its progress, and its
    stored state changes after the sequence number asked for."""

    job: VideoPublic | None
    last_seq: int = 0
    progress: ProgressEvent | None = None
    events: list[StatusEvent] = field(default_factory=list)


def read_views(
    session_factory: sessionmaker[Session],
    job_ids: list[str],
    owner_id: int | None,
    *,
    after_seq: dict[str, int] | None,
) -> dict[str, JobView]:
    """One transaction: each job (missing ones are None) and its events with ``seq`` above
    ``after_seq[job_id]`` (none when ``after_seq`` is None). ``owner_id`` None reads any job (the
    admin's dashboard, which follows every job of a page with one stream)."""
    views: dict[str, JobView] = {job_id: JobView(job=None) for job_id in job_ids}
    with session_scope(session_factory) as session:
        query = select(Job).where(Job.id.in_(job_ids))
        if owner_id is not None:
            query = query.where(Job.owner_id == owner_id)
        for job in session.scalars(query):
            views[job.id] = JobView(
                job=VideoPublic.read(session=session, job=job),
                last_seq=job.last_event_seq,
                progress=ProgressEvent.from_job(job),
            )
        if after_seq is not None:
            wanted = [job_id for job_id, view in views.items() if view.job is not None]
            lowest = min((after_seq.get(job_id, 0) for job_id in wanted), default=0)
            rows = session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id.in_(wanted), JobEvent.seq > lowest)
                .order_by(JobEvent.job_id, JobEvent.seq)
            )
            for row in rows:
                if row.seq > after_seq.get(row.job_id, 0):
                    views[row.job_id].events.append(StatusEvent.from_row(row))
    return views


def read_view(
    session_factory: sessionmaker[Session], job_id: str, owner_id: int | None, *, after_seq: int | None
) -> JobView:
    """`read_views` for one job."""
    after = None if after_seq is None else {job_id: after_seq}
    return read_views(session_factory, [job_id], owner_id, after_seq=after)[job_id]


class _Position:
    """What the client has: the last state change (``seq``, ``status``) and the last step, so nothing
    is sent twice and a step of an earlier attempt is never sent after a newer state."""

    def __init__(self, seq: int, status: str) -> None:
        self.seq, self.status = seq, status
        self.step_key = (-1, 0)  # (stage order, step); no stage yet

    def status_event(self, status: StatusEvent) -> LiveEvent | None:
        if status.seq <= self.seq:
            return None
        self.seq, self.status = status.seq, status.job.status
        self.step_key = (-1, 0)  # a new attempt (or none) starts over
        return LiveEvent("status", status.stream_data(), id=status.seq)

    def progress_event(self, progress: ProgressEvent) -> LiveEvent | None:
        if self.status != JobStatus.IN_PROGRESS.value or progress.status != self.status or progress.stage is None:
            return None
        key = (_STAGE_ORDER.get(progress.stage or "", -1), progress.step)
        if key <= self.step_key:
            return None
        self.step_key = key
        return LiveEvent("progress", progress.model_dump(mode="json", exclude_none=True))


async def job_events(
    job_id: str,
    *,
    owner_id: int | None,
    session_factory: sessionmaker[Session],
    redis_url: str,
    heartbeat_s: float,
    last_event_id: int | None = None,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> AsyncIterator[LiveEvent | None]:
    """The stream for one job; the caller has checked that ``owner_id`` owns it. With
    ``last_event_id`` (SSE's ``Last-Event-ID``), the state changes after it are replayed first and
    the job's current progress follows as a snapshot; without, the first event is the whole job
    (``state``)."""

    def read(after_seq: int | None) -> JobView:
        return read_view(session_factory, job_id, owner_id, after_seq=after_seq)

    subscription = await _subscribe(redis_url, job_id)
    try:
        view = await anyio.to_thread.run_sync(read, last_event_id)
        if view.job is None:
            return
        if last_event_id is None:
            state = {"type": "state", **view.job.model_dump(mode="json"), "step": view.job.current_step}
            yield LiveEvent("state", state, id=view.last_seq)
            position = _Position(view.last_seq, view.job.status)
        else:
            # The replayed events set the status; with none, nothing changed since the client's last.
            position = _Position(last_event_id, view.job.status)
            for status in view.events:
                item = position.status_event(status)
                if item is not None:
                    yield item
            if view.progress is not None and (item := position.progress_event(view.progress)) is not None:
                yield item
        if is_terminal(position.status):
            return
        if subscription is not None:
            items = _from_bus(subscription, read, position, heartbeat_s)
        else:
            items = _from_polling(read, position, heartbeat_s, poll_interval_s)
        async for item in items:
            yield item
            if item is not None and item.event == "status" and is_terminal(item.data["status"]):
                return
    finally:
        if subscription is not None:
            await subscription.aclose()


async def _subscribe(redis_url: str, job_id: str) -> HubSubscription | LocalSubscription | None:
    if not redis_url:  # embedded mode: the worker and the relay publish on the in-process bus
        return LOCAL_EVENTS.subscribe(job_id)
    try:
        return await hub_for(redis_url).subscribe(job_id)  # the process's one pub/sub connection
    except Exception as exc:  # live events are best effort: the table and the row are still there
        log.warning("no live events for %s, polling instead: %s", job_id, exc)
        return None


async def _next_message(
    pubsub: HubSubscription | LocalSubscription, timeout_s: float
) -> StatusEvent | ProgressEvent | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None and message["type"] == "message":
            try:
                return parse_live_message(message["data"])
            except ValueError:
                log.warning("ignoring a malformed live message for %s", message.get("channel"))
    return None


async def _from_bus(
    pubsub: HubSubscription | LocalSubscription, read: Reader, position: _Position, heartbeat_s: float
) -> AsyncIterator[LiveEvent | None]:
    while True:
        message = await _next_message(pubsub, heartbeat_s)
        if isinstance(message, ProgressEvent):
            item = position.progress_event(message)
            if item is not None:
                yield item
            continue
        if message is None:
            yield None  # a heartbeat; then look for changes whose live message was lost
        elif message.seq <= position.seq:
            continue
        view: JobView = await anyio.to_thread.run_sync(read, position.seq)
        if view.job is None:
            return
        for status in view.events:
            item = position.status_event(status)
            if item is not None:
                yield item


async def _from_polling(
    read: Reader, position: _Position, heartbeat_s: float, poll_interval_s: float
) -> AsyncIterator[LiveEvent | None]:
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while True:
        await asyncio.sleep(poll_interval_s)
        view: JobView = await anyio.to_thread.run_sync(read, position.seq)
        if view.job is None:
            return
        sent = False
        for status in view.events:
            item = position.status_event(status)
            if item is not None:
                sent = True
                yield item
        if view.progress is not None and (item := position.progress_event(view.progress)) is not None:
            sent = True
            yield item
        if sent:
            last_sent = loop.time()
        elif loop.time() - last_sent >= heartbeat_s:
            last_sent = loop.time()
            yield None
