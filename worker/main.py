"""``vidq worker``: one process per GPU, consuming the queues of the models it serves."""

from __future__ import annotations

import logging
import os

from celery import Celery

from jobs.dispatch import Sweeper, make_sweeper
from jobs.settings import Settings
from worker.celery_app import create_worker_app, set_context
from worker.context import build_context
from worker.engines import queues_for_models, served_models

log = logging.getLogger(__name__)


def prepare_worker(
    settings: Settings, *, models: list[str] | None = None, app: Celery | None = None
) -> tuple[Celery, list[str], Sweeper | None]:
    """Build the app, warm the models and start the sweeper; return what ``worker_main`` needs."""
    models = models or served_models(settings)
    app = app or create_worker_app(settings)
    ctx = build_context(settings)
    ctx.engines.served = models
    set_context(ctx)
    for model in models:  # load weights now, not when the first job is already waiting
        ctx.engines.get(model)
    sweeper = make_sweeper(settings, app, ctx.session_factory, ctx.storage) if settings.sweeper_enabled else None
    if sweeper is not None:
        sweeper.start()
    return app, queues_for_models(models), sweeper


def run_worker(settings: Settings, *, models: list[str] | None = None, loglevel: str = "INFO") -> None:
    app, queues, sweeper = prepare_worker(settings, models=models)
    log.info("serving %s on queues %s", models or served_models(settings), queues)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",  # the task runs in this process: one process owns one GPU
                "--concurrency=1",
                f"--queues={','.join(queues)}",
                f"--hostname={settings.worker_name or f'vidq-{os.getpid()}@%h'}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        if sweeper is not None:
            sweeper.stop()
