"""The worker's Celery application: the shared broker config plus the task bodies and the per-process
context, built in the process that runs tasks (after any fork) so no DB pool or CUDA state is shared."""

from __future__ import annotations

import os
from contextvars import Token

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun, worker_process_init, worker_process_shutdown

from jobs.broker import make_celery
from jobs.logs import job_id_var
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


@setup_logging.connect
def _keep_vidq_logging(**_: object) -> None:
    """Connected, so Celery configures no logging of its own: its records go through the process's
    one set-up (``jobs.logs``), in the same format as every other line, and stdout is not redirected."""


_task_job_tokens: dict[str, Token[str | None]] = {}


@task_prerun.connect
def _job_id_into_the_log_context(task_id: str = "", args: tuple = (), **_: object) -> None:
    """Tasks take a job id first (``vidq.render``); Celery's own lines about the task ("succeeded
    in 3.2s") then carry it like the render's."""
    if args and isinstance(args[0], str) and args[0].startswith("video_"):
        _task_job_tokens[task_id] = job_id_var.set(args[0])


@task_postrun.connect
def _job_id_out_of_the_log_context(task_id: str = "", **_: object) -> None:
    token = _task_job_tokens.pop(task_id, None)
    if token is not None:
        job_id_var.reset(token)


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
