"""Live job events on Redis pub/sub (one channel per job); an in-process bus in embedded mode.

Embedded mode (no Redis: API and worker in one process) uses an in-process bus instead.

Events are a best-effort live view: the database row stays the source of truth, so a lost event
never loses state, and publishing failures are logged, not raised into the render.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import Any, Protocol

import redis

from jobs.broker import redis_client
from jobs.settings import Settings

log = logging.getLogger(__name__)


def job_channel(job_id: str) -> str:
    return f"vidq:jobs:{job_id}"


class EventBus(Protocol):
    def publish(self, job_id: str, event: dict[str, Any]) -> None: ...


class NullEventBus:
    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        return None


class RedisEventBus:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        try:
            self.client.publish(job_channel(job_id), json.dumps(event, default=str))
        except redis.RedisError as exc:
            log.warning("could not publish event for %s: %s", job_id, exc)


class LocalEventBus:
    """Pub/sub inside one process, for embedded mode (API and worker share the process, and there is
    no Redis): the same messages as Redis delivers, so the event stream follows every stage and step
    live instead of polling the row. Subscribers are asyncio loops; publishers may be any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: dict[str, list[LocalSubscription]] = {}

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        channel = job_channel(job_id)
        message = {"type": "message", "channel": channel, "data": json.dumps(event, default=str)}
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


class LocalSubscription:
    """The part of ``redis.asyncio``'s PubSub that ``jobs.live`` uses: ``get_message`` and ``aclose``."""

    def __init__(self, bus: LocalEventBus, channel: str, loop: asyncio.AbstractEventLoop) -> None:
        self.bus, self.channel, self.loop = bus, channel, loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def deliver(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the reader is gone
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)

    async def get_message(
        self, *, ignore_subscribe_messages: bool = True, timeout: float = 0.0
    ) -> dict[str, Any] | None:
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        self.bus._remove(self)


LOCAL_EVENTS = LocalEventBus()  # the one in-process bus: embedded mode's API and worker share it


def make_event_bus(settings: Settings) -> EventBus:
    return RedisEventBus(redis_client(settings.redis_url)) if settings.redis_url else LOCAL_EVENTS
