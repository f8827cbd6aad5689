"""The worker's Celery application: the shared broker config plus the task bodies and the per-process
context, built in the process that runs tasks (after any fork) so no DB pool or CUDA state is shared."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

from jobs.broker import make_celery
from jobs.settings import Settings, get_settings
from worker.context import WorkerContext, build_context

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


def create_worker_app(settings: Settings | None = None) -> Celery:
    from worker.tasks import register_tasks

    app = make_celery(settings or get_settings())
    register_tasks(app)
    return app
