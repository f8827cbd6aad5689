"""One Redis pub/sub connection per API process for every open event stream.

Without it each stream opened its own connection (200 streams: 200 Redis connections). Here one
``PubSub`` per event loop subscribes to the channels of the jobs being watched (once per channel,
however many streams watch it), one reader task fans each message out to the streams' queues, and
a channel is unsubscribed when its last stream closes. A subscription has the interface of
``redis.asyncio``'s PubSub that ``jobs.live`` uses (``get_message``, ``aclose``), like the
in-process bus's ``LocalSubscription``.

If Redis drops the connection, redis-py reconnects and resubscribes the channels on the next read;
messages published meanwhile are lost, which the streams tolerate (they re-read the row at every
heartbeat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis

from jobs.events import QueueSubscription, job_channel

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # messages a slow stream may fall behind before the oldest are dropped


class HubSubscription(QueueSubscription):
    """One stream's share of the process's pub/sub connection."""

    def __init__(self, hub: RedisHub, channel: str) -> None:
        self.hub, self.channel = hub, channel
        self.queue = asyncio.Queue(QUEUE_SIZE)

    def deliver(self, message: dict[str, Any]) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
        self.queue.put_nowait(message)

    async def aclose(self) -> None:
        await self.hub.unsubscribe(self)


class RedisHub:
    def __init__(self, redis_url: str) -> None:
        self.client = aioredis.Redis.from_url(redis_url)
        self.pubsub = self.client.pubsub()
        self.subscribers: dict[str, set[HubSubscription]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    async def subscribe(self, job_id: str) -> HubSubscription:
        subscription = HubSubscription(self, job_channel(job_id))
        async with self._lock:
            watchers = self.subscribers.setdefault(subscription.channel, set())
            if not watchers:
                try:
                    await self.pubsub.subscribe(subscription.channel)
                except Exception:
                    self.subscribers.pop(subscription.channel, None)
                    raise
            watchers.add(subscription)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="vidq-live-hub")
        return subscription

    async def unsubscribe(self, subscription: HubSubscription) -> None:
        async with self._lock:
            watchers = self.subscribers.get(subscription.channel)
            if watchers is None:
                return
            watchers.discard(subscription)
            if not watchers:
                del self.subscribers[subscription.channel]
                with contextlib.suppress(Exception):  # Redis gone: nothing left to unsubscribe from
                    await self.pubsub.unsubscribe(subscription.channel)

    async def _read(self) -> None:
        while self.subscribers:
            try:
                message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except Exception as exc:  # a dropped connection: redis-py reconnects on the next read
                log.warning("live events: pub/sub read failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else str(channel)
            for subscription in list(self.subscribers.get(channel, ())):
                subscription.deliver(message)

    def connections(self) -> int:
        """Pub/sub connections this hub holds (0 or 1), for tests and metrics."""
        return 0 if self.pubsub.connection is None else 1


_HUBS: dict[tuple[str, int], RedisHub] = {}


def hub_for(redis_url: str) -> RedisHub:
    """The hub of this process's running event loop (a server has one; each test client its own)."""
    loop = asyncio.get_running_loop()
    key = (redis_url, id(loop))
    hub = _HUBS.get(key)
    if hub is None:
        hub = _HUBS[key] = RedisHub(redis_url)
    return hub
