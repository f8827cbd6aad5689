"""Prometheus metrics, every name prefixed ``vidq_``, computed at scrape time from PostgreSQL and
the worker registry: nothing is kept in process memory, so any API replica answers the same and
the numbers survive restarts. Histograms are built from the rows of the latest completed jobs
(``stats.MAX_ROWS``), so they describe recent history, not a counter since process start."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from jobs.admin import stats
from jobs.db import session_scope
from jobs.workers import WorkerRegistry

LATENCY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


def histogram(name: str, doc: str, values: list[float], buckets: tuple[float, ...]) -> HistogramMetricFamily:
    cumulative = [(str(float(b)), sum(1 for v in values if v <= b)) for b in buckets]
    cumulative.append(("+Inf", len(values)))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=sum(values))


class VidqCollector(Collector):
    def __init__(
        self, *, session_factory: sessionmaker[Session], workers: WorkerRegistry, heartbeat_timeout_s: float
    ) -> None:
        self.session_factory = session_factory
        self.workers = workers
        self.heartbeat_timeout_s = heartbeat_timeout_s

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.session_factory) as session:
            counts = stats.counts_by_status(session=session)
            queues = stats.queue_depths(session=session)
            hooks = stats.webhook_attempts_by_result(session=session)
            times = stats.completed_times(session=session)

        jobs = GaugeMetricFamily("vidq_jobs", "Jobs in the database by status.", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs

        depth = GaugeMetricFamily("vidq_queue_depth", "Queued jobs per queue.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "vidq_queue_oldest_age_seconds", "Age of the oldest queued job per queue.", labels=["queue"]
        )
        for q in queues:
            depth.add_metric([q.queue], q.depth)
            oldest.add_metric([q.queue], q.oldest_age_s or 0.0)
        yield depth
        yield oldest

        attempts = CounterMetricFamily(
            "vidq_webhook_attempts", "Webhook delivery attempts on record, by result.", labels=["result"]
        )
        for result, n in sorted(hooks.items()):
            attempts.add_metric([result], n)
        yield attempts

        yield histogram(
            "vidq_job_latency_seconds", "Submit to completion of completed jobs.", times.latency_s, LATENCY_BUCKETS
        )
        yield histogram(
            "vidq_queue_wait_seconds", "Submit to start of completed jobs.", times.queue_wait_s, LATENCY_BUCKETS
        )
        yield histogram("vidq_step_seconds", "Mean denoising step time of completed jobs.", times.step_s, STEP_BUCKETS)

        now = time.time()
        records = self.workers.list()
        online = GaugeMetricFamily("vidq_workers_online", "Workers whose last heartbeat is within the timeout.")
        online.add_metric([], sum(1 for w in records if not w.is_lost(timeout_s=self.heartbeat_timeout_s, now=now)))
        yield online
        beat = GaugeMetricFamily(
            "vidq_worker_last_heartbeat_timestamp_seconds",
            "Unix time of each worker's last heartbeat.",
            labels=["worker"],
        )
        done = GaugeMetricFamily(
            "vidq_worker_jobs_done", "Jobs each worker finished since it started.", labels=["worker"]
        )
        for w in records:
            beat.add_metric([w.worker_id], w.heartbeat_at)
            done.add_metric([w.worker_id], w.jobs_done)
        yield beat
        yield done


def render_metrics(
    *, session_factory: sessionmaker[Session], workers: WorkerRegistry, heartbeat_timeout_s: float
) -> bytes:
    """The Prometheus text exposition of every vidq metric."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        VidqCollector(session_factory=session_factory, workers=workers, heartbeat_timeout_s=heartbeat_timeout_s)
    )
    return generate_latest(registry)
