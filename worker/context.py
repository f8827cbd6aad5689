"""Everything a worker process holds for its lifetime: DB sessions, storage, the event bus and the
warm engines. Built once per process, after any fork, so no connection or CUDA context is shared."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import redis
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_session_factory
from jobs.events import EventBus, NullEventBus, RedisEventBus
from jobs.settings import Settings
from jobs.storage import Storage, make_storage
from worker.engines import EnginePool


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    events: EventBus
    engines: EnginePool
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def build_context(settings: Settings) -> WorkerContext:
    storage = make_storage(settings)
    storage.ensure_ready()
    events: EventBus = RedisEventBus(redis.Redis.from_url(settings.redis_url)) if settings.redis_url else NullEventBus()
    return WorkerContext(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings)),
        storage=storage,
        events=events,
        engines=EnginePool(settings),
    )
