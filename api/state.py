"""What the API process holds for its lifetime, built once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from api.login_throttle import LoginThrottle
from api.streams import StreamSlots
from jobs.affinity import affinity_router
from jobs.dispatch import CeleryPublisher, Sweeper, relay_outbox
from jobs.events import EventBus
from jobs.readiness import ReadinessProbe
from jobs.settings import Settings
from jobs.storage import Storage
from jobs.webhooks.outbox import relay_webhooks
from jobs.workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    celery: Celery
    publisher: CeleryPublisher  # GPU jobs and webhook deliveries
    events: EventBus  # live job events (the API publishes the changes it makes: cancellations)
    sweeper: Sweeper | None
    workers: WorkerRegistry  # the status records workers publish (Redis, or this process when embedded)
    readiness: ReadinessProbe  # /readyz: database, broker and storage, each checked within a deadline
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)  # admin login failures per client
    streams: StreamSlots = field(default_factory=StreamSlots)  # open event streams per API key

    def relay_now(self) -> None:
        """Publish what a committed change put in the outboxes (render messages, webhook deliveries)
        now, for low latency; if the broker refuses, the sweeper's relay publishes it on its next pass."""
        try:
            relay_outbox(
                session_factory=self.session_factory,
                publisher=self.publisher,
                route=affinity_router(self.workers.list, heartbeat_timeout_s=self.settings.heartbeat_timeout_s),
            )
            relay_webhooks(session_factory=self.session_factory, publisher=self.publisher, settings=self.settings)
        except Exception as exc:
            log.warning("immediate dispatch failed, the sweeper will retry: %s", exc)
