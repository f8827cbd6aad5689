"""``vidq worker``: one process per GPU, consuming the queues of the models it serves and the
``webhooks`` queue; or, with ``--queues webhooks``, a CPU-only webhook sender that loads no model."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from celery import Celery
from celery.signals import worker_ready

from jobs.affinity import worker_queue
from jobs.broker import WEBHOOK_QUEUE
from jobs.dispatch import Sweeper, make_sweeper
from jobs.logs import json_line
from jobs.settings import Settings
from jobs.workers import make_worker_registry
from worker.celery_app import create_worker_app
from worker.context import build_context, set_context
from worker.engines import queues_for_models, served_models
from worker.status import StatusPublisher

log = logging.getLogger(__name__)

WEBHOOK_CONCURRENCY = 8  # a webhook-only worker waits on receivers, not on a GPU: threads suffice


def prepare_worker(
    settings: Settings, *, models: list[str] | None = None, queues: list[str] | None = None, app: Celery | None = None
) -> tuple[Celery, list[str], Sweeper]:
    """Build the app, warm the models and start the sweeper; return what ``worker_main`` needs.

    ``queues`` defaults to the served models' GPU queues, plus ``webhooks`` only in embedded mode
    (one process does everything) or with ``VIDQ_WORKER_WEBHOOKS``: a render worker that sends
    webhooks lets one client's slow receiver delay every render. Models are loaded only when a GPU
    queue is consumed, so ``queues=["webhooks"]`` (the webhook sender) starts without the engine.
    """
    models = models or served_models(settings)
    sends_webhooks = settings.embedded or settings.worker_webhooks
    queues = queues or [*queues_for_models(models, settings.worker_gpus), *([WEBHOOK_QUEUE] if sends_webhooks else [])]
    renders = any(q != WEBHOOK_QUEUE for q in queues)
    app = app or create_worker_app(settings)
    ctx = build_context(settings)
    if renders:  # its own queue: jobs whose adapters it holds warm (jobs.affinity)
        queues = [*queues, worker_queue(ctx.worker_id)]
    ctx.engines.served = models if renders else []
    set_context(ctx)
    if renders:
        for model in models:  # load weights now, not when the first job is already waiting
            ctx.engines.get(model)
    worker_ready.connect(lambda **_: ctx.activity.ready(), weak=False)  # the consumer takes messages now
    StatusPublisher(
        registry=make_worker_registry(settings),
        worker_id=ctx.worker_id,
        activity=ctx.activity,
        queues=queues,
        served_models=ctx.engines.served,
        loaded_models=lambda: ctx.engines.loaded,
        interval_s=settings.heartbeat_interval_s,
        vram_budget_bytes=ctx.engines.vram_budget_bytes(),
        warm_loras=ctx.engines.warm_adapters,
    ).start()  # a daemon thread: its heartbeats stop with the process, and the dashboard shows it lost
    if settings.worker_metrics_port:
        serve_metrics(settings.worker_metrics_port, ctx.worker_id)
    # The process's relay (fans out the state changes this worker commits) and, unless
    # VIDQ_SWEEPER_ENABLED=false, its repairs.
    sweeper = make_sweeper(settings, app, ctx.session_factory, ctx.storage, bus=ctx.events)
    sweeper.start()
    return app, queues, sweeper


def _celery_notices_as_json() -> None:
    """Celery writes its shutdown notices ("Warm shutdown", ...) straight to a file descriptor from
    its signal handlers, bypassing logging; in JSON mode they become JSON lines, still written the
    same signal-safe way (one ``os.write``, no logging lock)."""
    import celery.apps.worker as celery_worker

    def say(msg: str, f: TextIO = sys.__stderr__) -> None:  # type: ignore[assignment]
        os.write(f.fileno(), (json_line("WARNING", "celery.apps.worker", msg) + "\n").encode())

    celery_worker.safe_say = say


def serve_metrics(port: int, worker_id: str) -> None:
    """The worker's ``/metrics`` on `port` (a daemon thread): its counters and histograms, and its
    GPUs read through NVML at each scrape."""
    from prometheus_client import start_http_server

    from jobs.metrics import scrape_registry
    from worker.gpus import GpuCollector

    start_http_server(port, registry=scrape_registry(GpuCollector(worker_id)))
    log.info("metrics on port %d", port)


def run_worker(
    settings: Settings, *, models: list[str] | None = None, queues: list[str] | None = None, loglevel: str = "INFO"
) -> None:
    if settings.log_format == "json":
        _celery_notices_as_json()
    app, queues, sweeper = prepare_worker(settings, models=models, queues=queues)
    webhooks_only = queues == [WEBHOOK_QUEUE]
    log.info("consuming %s%s", queues, "" if webhooks_only else f", serving {models or served_models(settings)}")
    # A GPU worker runs one task at a time in its own process (it owns one GPU); a webhook-only
    # worker sends several deliveries at once on threads.
    pool = (
        ["--pool=threads", f"--concurrency={WEBHOOK_CONCURRENCY}"]
        if webhooks_only
        else ["--pool=solo", "--concurrency=1"]
    )
    try:
        app.worker_main(
            [
                # The start-up banner is printed, not logged: in JSON mode every line must be JSON.
                *(["--quiet"] if settings.log_format == "json" else []),
                "worker",
                *pool,
                f"--queues={','.join(queues)}",
                f"--hostname={settings.worker_name or f'vidq-{os.getpid()}@%h'}",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        sweeper.stop()
