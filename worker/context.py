"""Everything a worker process holds for its lifetime: DB sessions, storage, the event bus and the
warm engines. Built once per process, after any fork, so no connection or CUDA context is shared."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass, field

from celery.signals import worker_process_init, worker_process_shutdown
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_session_factory
from jobs.events import EventBus, make_event_bus
from jobs.settings import Settings, get_settings
from jobs.storage import Storage, make_storage
from jobs.webhooks.slots import ClientSlots, MemoryClientSlots, make_client_slots
from worker.engines import EnginePool
from worker.loras import LoraFiles
from worker.status import WorkerActivity

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    storage: Storage
    events: EventBus
    engines: EnginePool
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    activity: WorkerActivity = field(default_factory=WorkerActivity)  # what the status thread publishes
    lora_files: LoraFiles = field(init=False)  # local copies of adapter files
    # Webhook attempts in flight per client, shared by every sender (Redis) or this process's own.
    webhook_slots: ClientSlots = field(default_factory=MemoryClientSlots)

    def __post_init__(self) -> None:
        self.lora_files = LoraFiles(self.storage, self.settings.lora_files_dir, self.settings.lora_files_kept)


def build_context(settings: Settings) -> WorkerContext:
    storage = make_storage(settings)
    try:
        storage.ensure_ready()
    except Exception as exc:  # a store that is down at start: uploads retry and re-create the bucket
        log.warning("object storage is not ready (%s); uploads will retry", exc)
    events = make_event_bus(settings)
    return WorkerContext(
        settings=settings,
        session_factory=make_session_factory(make_engine(settings)),
        storage=storage,
        events=events,
        engines=EnginePool(settings),
        webhook_slots=make_client_slots(settings),
    )


# The process's context: built on first use (or set by `vidq worker` before it starts consuming).
_context: WorkerContext | None = None
_context_pid: int | None = None


def get_context() -> WorkerContext:
    if _context is None:
        set_context(build_context(get_settings()))
    assert _context is not None
    return _context


def set_context(ctx: WorkerContext | None) -> None:
    global _context, _context_pid
    _context, _context_pid = ctx, os.getpid()


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    # A forked child must not reuse the parent's DB connections or CUDA state: it builds its own.
    # (The solo pool sends this signal too, in the same process: then the context stays.)
    if _context_pid != os.getpid():
        set_context(None)


@worker_process_shutdown.connect
def _close(**_: object) -> None:
    set_context(None)
