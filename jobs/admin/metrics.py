"""The gauges of ``/metrics``, read at scrape time from PostgreSQL and the worker registry: jobs by
status, queue depth and age, workers online. They are states, not events, so any API replica
answers the same. Events (submissions, outcomes, steps, stages, webhook attempts, HTTP requests)
are true counters and histograms in ``jobs.metrics``."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from jobs import metrics
from jobs.admin import stats
from jobs.db import session_scope
from jobs.workers import WorkerRegistry


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
    """The Prometheus text exposition: the counters and histograms of ``jobs.metrics`` (every API
    process's, in multiprocess mode) and these gauges."""
    return metrics.render(
        VidqCollector(session_factory=session_factory, workers=workers, heartbeat_timeout_s=heartbeat_timeout_s)
    )
