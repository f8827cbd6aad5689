"""Live job events on Redis pub/sub (one channel per job); a no-op bus in embedded mode.

Events are a best-effort live view: the database row stays the source of truth, so a lost event
never loses state, and publishing failures are logged, not raised into the render.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import redis

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


def make_event_bus(settings: Settings) -> EventBus:
    return RedisEventBus(redis.Redis.from_url(settings.redis_url)) if settings.redis_url else NullEventBus()
