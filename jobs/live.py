"""A job's live event stream: its current state, then every status change and step until it ends.

Fed by Redis pub/sub (the worker publishes each stage, step and status on ``vidq:jobs:<id>``),
through the process's one shared subscription connection (``jobs.live_hub``).
The subscription opens before the first database read, so a late subscriber misses nothing: the
first event is the row as it is now, and later events that the row already covers are dropped.
Embedded mode (no Redis) subscribes to the in-process bus the same way; if Redis cannot be
reached, the row itself is polled.

Events are ``LiveEvent(event, data)``, ``data`` always carrying ``status`` (and, for steps,
``step``); ``None`` items are heartbeats. The stream ends after a terminal status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import session_scope
from jobs.events import LOCAL_EVENTS, LocalSubscription
from jobs.live_hub import HubSubscription, hub_for
from jobs.models import Job
from jobs.public import job_to_public, queue_position
from jobs.states import JobStatus, is_terminal
from spec.stages import Stage

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2
_STAGE_ORDER = {stage.value: index for index, stage in enumerate(Stage)}


@dataclass(frozen=True)
class LiveEvent:
    event: str  # "state" (the first), "status" or "progress"
    data: dict[str, Any]


def read_job(session_factory: sessionmaker[Session], job_id: str, owner_id: int) -> dict[str, Any] | None:
    """The public job with ``step``, or None once it is deleted."""
    with session_scope(session_factory) as session:
        job = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == owner_id))
        if job is None:
            return None
        data = job_to_public(job, queue_position=queue_position(session=session, job=job))
        return {**data, "step": job.current_step}


def _progress_from_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "progress",
        "id": row["id"],
        "status": row["status"],
        "stage": row["stage"],
        "step": row["step"],
        "total_steps": row["total_steps"],
        "progress": row["progress"],
        "percent": row["progress"],
        "eta_seconds": row["eta_seconds"],
    }


class _Position:
    """Where the client's view is (stage, step), so an event the client already has is not sent twice."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.status = row["status"]
        self.key = self._key(row)

    @staticmethod
    def _key(event: dict[str, Any]) -> tuple[int, int]:
        return (_STAGE_ORDER.get(event.get("stage") or "", -1), int(event.get("step") or 0))

    def advances(self, event: dict[str, Any]) -> bool:
        key = self._key(event)
        if key <= self.key:
            return False
        self.key = key
        return True

    def set_status(self, status: str) -> None:
        if status != self.status and status == JobStatus.QUEUED.value:
            self.key = (-1, 0)  # requeued after a lost worker: the next attempt starts over
        self.status = status


async def job_events(
    job_id: str,
    *,
    owner_id: int,
    session_factory: sessionmaker[Session],
    redis_url: str,
    heartbeat_s: float,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> AsyncIterator[LiveEvent | None]:
    """The stream for one job; the caller has checked that ``owner_id`` owns it."""

    def read() -> dict[str, Any] | None:
        return read_job(session_factory, job_id, owner_id)

    subscription = await _subscribe(redis_url, job_id)
    try:
        current = await anyio.to_thread.run_sync(read)
        if current is None:
            return
        yield LiveEvent("state", {"type": "state", **current})
        if is_terminal(current["status"]):
            return
        position = _Position(current)
        if subscription is not None:
            events = _from_redis(subscription, read, position, heartbeat_s)
        else:
            events = _from_polling(read, position, heartbeat_s, poll_interval_s)
        async for item in events:
            yield item
            if item is not None and item.event == "status" and is_terminal(item.data["status"]):
                return
    finally:
        if subscription is not None:
            await subscription.aclose()


async def _subscribe(redis_url: str, job_id: str) -> HubSubscription | LocalSubscription | None:
    if not redis_url:  # embedded mode: the worker publishes on the in-process bus
        return LOCAL_EVENTS.subscribe(job_id)
    try:
        return await hub_for(redis_url).subscribe(job_id)  # the process's one pub/sub connection
    except Exception as exc:  # live events are best effort: the row is still there to poll
        log.warning("no live events for %s, polling instead: %s", job_id, exc)
        return None


async def _next_message(pubsub: HubSubscription | LocalSubscription, timeout_s: float) -> dict[str, Any] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
        if message is not None and message["type"] == "message":
            return json.loads(message["data"])  # type: ignore[no-any-return]
    return None


async def _from_redis(
    pubsub: HubSubscription | LocalSubscription,
    read: Callable[[], dict[str, Any] | None],
    position: _Position,
    heartbeat_s: float,
) -> AsyncIterator[LiveEvent | None]:
    while True:
        message = await _next_message(pubsub, heartbeat_s)
        if message is None:
            yield None
            # Not every change is published (the sweeper failing a lost worker's job is not):
            # the row is the truth, so look at it once per heartbeat.
            row = await anyio.to_thread.run_sync(read)
            if row is None:
                return
            if row["status"] != position.status:
                position.set_status(row["status"])
                yield LiveEvent("status", {"type": "status", **row})
            continue
        if message.get("type") == "progress":
            if message.get("status") == position.status and position.advances(message):
                yield LiveEvent("progress", message)
            continue
        status = message.get("status")
        if status is None or status == position.status:
            continue
        position.set_status(status)
        if is_terminal(status):
            # The full job (timings, error, expiry) from the row, which the worker committed first.
            row = await anyio.to_thread.run_sync(read)
            yield LiveEvent("status", {"type": "status", **(row or message), "status": status})
        else:
            yield LiveEvent("status", {**message, "type": "status"})


async def _from_polling(
    read: Callable[[], dict[str, Any] | None], position: _Position, heartbeat_s: float, poll_interval_s: float
) -> AsyncIterator[LiveEvent | None]:
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while True:
        await asyncio.sleep(poll_interval_s)
        row = await anyio.to_thread.run_sync(read)
        if row is None:
            return
        if row["status"] != position.status:
            position.set_status(row["status"])
            last_sent = loop.time()
            yield LiveEvent("status", {"type": "status", **row})
        elif row["status"] == JobStatus.IN_PROGRESS.value and position.advances(row):
            last_sent = loop.time()
            yield LiveEvent("progress", _progress_from_row(row))
        elif loop.time() - last_sent >= heartbeat_s:
            last_sent = loop.time()
            yield None
