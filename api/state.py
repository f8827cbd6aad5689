"""What the API process holds for its lifetime, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from api.login_throttle import LoginThrottle
from api.streams import StreamSlots
from jobs.dispatch import CeleryPublisher, Sweeper
from jobs.events import EventBus
from jobs.keys import KeyCache
from jobs.readiness import ReadinessProbe
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    celery: Celery
    publisher: CeleryPublisher  # GPU jobs and webhook deliveries
    events: EventBus  # live job events (the relay publishes the state changes; streams subscribe)
    sweeper: Sweeper  # the relay of this process's state changes, and the repairs unless disabled
    workers: WorkerRegistry  # the status records workers publish (Redis, or this process when embedded)
    readiness: ReadinessProbe  # /readyz: database, broker and storage, each checked within a deadline
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)  # admin login failures per client
    streams: StreamSlots = field(default_factory=StreamSlots)  # open event streams per API key
    admin_streams: StreamSlots = field(default_factory=StreamSlots)  # open dashboard live streams per admin key
    # Threads that end read requests' transactions (api.deps); made in the event loop at start-up.
    teardown_threads: anyio.CapacityLimiter | None = None
    key_cache: KeyCache = field(default_factory=lambda: KeyCache(0))  # keys seen lately (VIDQ_API_KEY_CACHE_S)
