"""Job events as typed messages, and the live bus that carries them.

A state change is a `StatusEvent` (built from its `JobEvent` row: the job's sequence number and the
public job); a denoising step or stage is a `ProgressEvent`. Both cross processes as JSON on Redis
pub/sub (one channel per job), or on an in-process bus in embedded mode (no Redis: API and worker
in one process).

The live bus is best effort: the ``job_events`` table stays the source of truth for state changes
(streams replay from it; ``jobs.live``), and publishing failures are logged, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

import redis
from pydantic import BaseModel, Field, TypeAdapter

from jobs.broker import redis_client
from jobs.models import Job, JobEvent
from jobs.public import VideoPublic
from jobs.settings import Settings
from jobs.states import JobStatus
from spec.stages import progress_percent

log = logging.getLogger(__name__)


class JobEventType(StrEnum):
    """The type of a state change (a ``JobEvent.type``) and of the webhook that announces it;
    ``video.progress`` is a webhook only (steps are not stored as events)."""

    QUEUED = "video.queued"
    STARTED = "video.started"
    PROGRESS = "video.progress"
    COMPLETED = "video.completed"
    FAILED = "video.failed"
    CANCELLED = "video.cancelled"


EVENT_FOR_STATUS: dict[JobStatus, JobEventType] = {
    JobStatus.QUEUED: JobEventType.QUEUED,
    JobStatus.IN_PROGRESS: JobEventType.STARTED,
    JobStatus.COMPLETED: JobEventType.COMPLETED,
    JobStatus.FAILED: JobEventType.FAILED,
    JobStatus.CANCELLED: JobEventType.CANCELLED,
}


class StatusEvent(BaseModel):
    """A committed state change: the job's event number ``seq`` (the SSE event id) and the public
    job right after the change."""

    type: Literal["status"] = "status"
    seq: int
    event: JobEventType
    job: VideoPublic

    @classmethod
    def from_row(cls, row: JobEvent) -> StatusEvent:
        return cls(seq=row.seq, event=JobEventType(row.type), job=VideoPublic.model_validate(row.data))

    def stream_data(self) -> dict[str, Any]:
        """What an event stream sends: the public job, flat, with ``type`` and ``step``."""
        return {"type": "status", **self.job.model_dump(mode="json"), "step": self.job.current_step}


class ProgressEvent(BaseModel):
    """Where a running job is: its stage, denoising step and ETA. Published on every step; the row
    is written less often (``jobs.execution.record_progress``)."""

    type: Literal["progress"] = "progress"
    id: str
    status: str = JobStatus.IN_PROGRESS.value
    stage: str | None
    step: int
    total_steps: int
    progress: int
    percent: int
    eta_seconds: float | None = None
    elapsed_s: float | None = None  # since the render began (live events only)
    step_elapsed_s: float | None = None  # since the denoising loop began (live events only)

    @classmethod
    def at(
        cls,
        *,
        job_id: str,
        stage: str,
        step: int,
        total_steps: int,
        eta_seconds: float | None = None,
        elapsed_s: float | None = None,
        step_elapsed_s: float | None = None,
    ) -> ProgressEvent:
        """A running render's position (the worker's view)."""
        progress = progress_percent(stage, step, total_steps)
        return cls(
            id=job_id,
            stage=stage,
            step=step,
            total_steps=total_steps,
            progress=progress,
            percent=progress,
            eta_seconds=eta_seconds,
            elapsed_s=elapsed_s,
            step_elapsed_s=step_elapsed_s,
        )

    @classmethod
    def from_job(cls, job: Job) -> ProgressEvent:
        """The last position the row recorded (a reconnecting stream's snapshot)."""
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            step=job.current_step,
            total_steps=job.total_steps,
            progress=job.progress,
            percent=job.progress,
            eta_seconds=job.eta_seconds,
        )


LiveMessage = Annotated[StatusEvent | ProgressEvent, Field(discriminator="type")]
_LIVE_MESSAGE: TypeAdapter[StatusEvent | ProgressEvent] = TypeAdapter(LiveMessage)


def parse_live_message(data: str | bytes) -> StatusEvent | ProgressEvent:
    """A message as published on the bus; raises ``ValueError`` for anything else."""
    return _LIVE_MESSAGE.validate_json(data)


def job_channel(job_id: str) -> str:
    return f"vidq:jobs:{job_id}"


class EventBus(Protocol):
    def publish(self, job_id: str, event: StatusEvent | ProgressEvent) -> None: ...


def publish_all(bus: EventBus, events: Sequence[tuple[str, StatusEvent | ProgressEvent]]) -> None:
    """Publish ``(job_id, event)`` pairs in order: in one round trip where the bus can batch
    (``publish_many``), else one by one.

    The relay publishes a whole fan-out batch at once. One Redis round trip per event cost the relay
    thread a GIL hand-off each, and while the route threads keep the GIL busy each hand-off waits up
    to the switch interval (5 ms): under a full load of submits the relay fell ever further behind
    (``benchmarks/bench_service.py`` before this: 22 s from submit to broker at the median after
    60 s of load)."""
    many = getattr(bus, "publish_many", None)
    if many is not None:
        many(events)
        return
    for job_id, event in events:
        bus.publish(job_id, event)


class NullEventBus:
    def publish(self, job_id: str, event: StatusEvent | ProgressEvent) -> None:
        return None


class RedisEventBus:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, job_id: str, event: StatusEvent | ProgressEvent) -> None:
        try:
            self.client.publish(job_channel(job_id), event.model_dump_json())
        except redis.RedisError as exc:
            log.warning("could not publish event for %s: %s", job_id, exc)

    def publish_many(self, events: Sequence[tuple[str, StatusEvent | ProgressEvent]]) -> None:
        """All of them in one pipelined round trip (not a transaction: PUBLISH needs none)."""
        if not events:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for job_id, event in events:
                pipe.publish(job_channel(job_id), event.model_dump_json())
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not publish %d events: %s", len(events), exc)


class LocalEventBus:
    """Pub/sub inside one process, for embedded mode (API and worker share the process, and there is
    no Redis): the same messages as Redis delivers, so the event stream follows every stage and step
    live instead of polling the row. Subscribers are asyncio loops; publishers may be any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[LocalSubscription]] = {}

    def publish(self, job_id: str, event: StatusEvent | ProgressEvent) -> None:
        channel = job_channel(job_id)
        message = {"type": "message", "channel": channel, "data": event.model_dump_json()}
        with self._lock:
            subscribers = list(self._subscribers.get(channel, ()))
        for subscription in subscribers:
            subscription.deliver(message)

    def subscribe(self, job_id: str) -> LocalSubscription:
        """Must be called on the event loop that will read the subscription."""
        subscription = LocalSubscription(self, job_channel(job_id), asyncio.get_running_loop())
        with self._lock:
            self._subscribers.setdefault(subscription.channel, []).append(subscription)
        return subscription

    def _remove(self, subscription: LocalSubscription) -> None:
        with self._lock:
            subscribers = self._subscribers.get(subscription.channel, [])
            if subscription in subscribers:
                subscribers.remove(subscription)
            if not subscribers:
                self._subscribers.pop(subscription.channel, None)


class QueueSubscription:
    """The part of ``redis.asyncio``'s PubSub that ``jobs.live`` reads (``get_message``), over an
    asyncio queue that a fan-out fills; subclasses say how messages arrive and how to leave."""

    queue: asyncio.Queue[dict[str, Any]]

    async def get_message(
        self, *, ignore_subscribe_messages: bool = True, timeout: float = 0.0
    ) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None


class LocalSubscription(QueueSubscription):
    """A subscription to the in-process bus (embedded mode)."""

    def __init__(self, bus: LocalEventBus, channel: str, loop: asyncio.AbstractEventLoop) -> None:
        self.bus, self.channel, self.loop = bus, channel, loop
        self.queue = asyncio.Queue()

    def deliver(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the reader is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    async def aclose(self) -> None:
        self.bus._remove(self)


LOCAL_EVENTS = LocalEventBus()  # the one in-process bus: embedded mode's API and worker share it


def make_event_bus(settings: Settings) -> EventBus:
    return RedisEventBus(redis_client(settings.redis_url)) if settings.redis_url else LOCAL_EVENTS
