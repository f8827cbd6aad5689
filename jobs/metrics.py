"""vidq's Prometheus instruments: true counters and histograms, updated by the process where the
thing happens (the API counts requests and submissions, a worker its renders, steps and stages,
the webhook sender its attempts, whichever process applies a state change counts it).

Prometheus adds the processes up (``sum(rate(vidq_jobs_finished_total[5m]))``). Each process
serves its own: the API at ``GET /metrics``, a worker on ``VIDQ_WORKER_METRICS_PORT``. Several
processes behind one port (``vidq api --workers N``) share ``PROMETHEUS_MULTIPROC_DIR``, where
prometheus_client keeps each value in a memory-mapped file per process, and the scrape adds the
files up, so whichever process answers, the counters never go back.

A change made inside a database transaction is counted when that transaction commits
(``after_commit``): a rolled-back completion is not a completion.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

if os.environ.get(MULTIPROC_ENV):  # each instrument opens its file there as it is created
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

# Instruments live in vidq's own registry, not prometheus_client's default one: /metrics shows
# vidq_* names only, and tests can build apps side by side.
REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_SUBMITTED = Counter("vidq_jobs_submitted", "Jobs accepted by the API.", ["model"], registry=REGISTRY)
JOBS_FINISHED = Counter(
    "vidq_jobs_finished",
    "Jobs that ended, by outcome (completed, failed, cancelled).",
    ["model", "outcome"],
    registry=REGISTRY,
)
JOBS_REQUEUED = Counter(
    "vidq_jobs_requeued", "Jobs put back in the queue (lost worker, operator retry).", ["model"], registry=REGISTRY
)
JOB_LATENCY = Histogram(
    "vidq_job_latency_seconds",
    "Submit to completion of completed jobs.",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "vidq_queue_wait_seconds",
    "Submit to start of each attempt.",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "vidq_stage_seconds",
    "Duration of each pipeline stage of completed renders.",
    ["model", "stage"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "vidq_denoising_step_seconds",
    "Duration of each denoising step.",
    ["model"],
    buckets=STEP_BUCKETS,
    registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "vidq_webhook_attempts",
    "Webhook delivery attempts, by result (success, http_error, error, refused).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "vidq_webhook_attempt_seconds", "Duration of webhook delivery attempts.", buckets=HTTP_BUCKETS, registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "vidq_http_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_SECONDS = Histogram(
    "vidq_http_request_duration_seconds",
    "Time to answer HTTP requests (to the first byte of the body).",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)

_PENDING = "vidq_metrics_after_commit"


def after_commit(owner: object, update: Callable[[], None]) -> None:
    """Run `update` when the session that holds `owner` (a row, or a Session) commits; at once if
    there is none. Dropped on rollback."""
    session = owner if isinstance(owner, Session) else object_session(owner)
    if session is None:
        update()
        return
    session.info.setdefault(_PENDING, []).append(update)


@event.listens_for(Session, "after_commit")
def _apply_pending(session: Session) -> None:
    for update in session.info.pop(_PENDING, []):
        update()


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def scrape_registry(*extra: object) -> CollectorRegistry:
    """What a scrape exposes: this process's instruments, or in multiprocess mode every process's
    (summed from ``PROMETHEUS_MULTIPROC_DIR``), plus `extra` collectors (gauges read at scrape time)."""
    if multiprocess_mode():
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)  # type: ignore[arg-type]
    return registry


class _Forward:
    """Exposes another registry's metrics inside a per-scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self):  # type: ignore[no-untyped-def]
        return self.source.collect()


def render(*extra: object) -> bytes:
    """The Prometheus text exposition of `scrape_registry(*extra)`."""
    return generate_latest(scrape_registry(*extra))
