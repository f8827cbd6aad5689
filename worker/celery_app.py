"""The worker's Celery application, findable as `celery -A worker.celery_app worker`.

The tasks (`worker.tasks`) are module-level `shared_task`s with explicit names, so they bind to
whichever app a process builds: the module's `app` (from the environment's settings, built on
first access) or one that `create_worker_app` builds for given settings. This module imports the
task module; the task module does not import this one (its per-process context lives in
`worker.context`), so there is no import loop. The Celery signals that route its logging through
the process's one set-up are connected here, where every worker process imports them.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

from jobs.broker import make_celery
from jobs.logs import job_id_var
from jobs.settings import Settings, get_settings


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The broker configuration shared with the API, with the task bodies registered."""
    import worker.tasks  # noqa: F401 - registers the shared tasks

    app = make_celery(settings or get_settings())
    app.conf.imports = ("worker.tasks",)  # what `celery worker` imports in each child process
    return app


def __getattr__(name: str) -> Any:
    # `app` is built on first access, so importing this module reads no settings.
    if name == "app":
        value = create_worker_app()
        globals()["app"] = value
        return value
    raise AttributeError(f"module 'worker.celery_app' has no attribute {name!r}")


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
