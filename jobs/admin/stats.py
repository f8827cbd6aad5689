"""Numbers about the fleet, computed from the database so that history survives restarts: the
overview page, its charts, per-key usage and the gauges and histograms of ``/metrics``.

Aggregations that need percentiles are done in Python over the rows of a bounded window (the last
hour, at most ``MAX_ROWS`` jobs), which keeps them identical on PostgreSQL and embedded SQLite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from jobs.db import utcnow
from jobs.models import ApiKey, Job, JobAttempt
from jobs.states import JobStatus
from spec.stages import Stage

MAX_ROWS = 20_000
WINDOW = timedelta(hours=1)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0–100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def counts_by_status(*, session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {status.value: 0 for status in JobStatus}
    counts.update({status: int(n) for status, n in rows})
    return counts


@dataclass
class QueueDepth:
    queue: str
    depth: int
    oldest_age_s: float | None


def queue_depths(*, session: Session, now: datetime | None = None) -> list[QueueDepth]:
    now = now or utcnow()
    rows = session.execute(
        select(Job.queue, func.count(), func.min(Job.created_at))
        .where(Job.status == JobStatus.QUEUED.value)
        .group_by(Job.queue)
        .order_by(Job.queue)
    ).all()
    return [QueueDepth(queue, int(n), (now - oldest).total_seconds() if oldest else None) for queue, n, oldest in rows]


@dataclass
class Finished:
    completed_at: datetime
    status: str
    queue_wait_s: float | None
    render_s: float | None
    latency_s: float | None


def finished_since(*, session: Session, since: datetime) -> list[Finished]:
    rows = session.execute(
        select(Job.completed_at, Job.status, Job.created_at, Job.started_at)
        .where(Job.completed_at >= since, Job.status.in_([JobStatus.COMPLETED.value, JobStatus.FAILED.value]))
        .order_by(Job.completed_at.desc())
        .limit(MAX_ROWS)
    ).all()
    out = []
    for completed_at, status, created_at, started_at in rows:
        out.append(
            Finished(
                completed_at=completed_at,
                status=status,
                queue_wait_s=(started_at - created_at).total_seconds() if started_at else None,
                render_s=(completed_at - started_at).total_seconds() if started_at else None,
                latency_s=(completed_at - created_at).total_seconds(),
            )
        )
    return out


@dataclass
class ChartBar:
    label: str
    value: float
    x: float
    y: float
    width: float
    height: float


def chart(values: list[tuple[str, float]], *, width: float = 300, height: float = 80) -> dict[str, Any]:
    """Bar geometry for an inline SVG (the template only draws rectangles)."""
    top = max((v for _, v in values), default=0.0) or 1.0
    slot = width / max(len(values), 1)
    bars = [
        ChartBar(label, value, i * slot + 1, height - value / top * height, max(slot - 2, 1), value / top * height)
        for i, (label, value) in enumerate(values)
    ]
    return {"bars": bars, "width": width, "height": height, "max": top}


@dataclass
class Overview:
    counts: dict[str, int]
    queues: list[QueueDepth]
    jobs_per_minute: float
    failure_rate: float | None
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    render_p50: float | None
    render_p95: float | None
    throughput_chart: dict[str, Any] = field(default_factory=dict)
    latency_chart: dict[str, Any] = field(default_factory=dict)


def overview(*, session: Session, now: datetime | None = None, buckets: int = 12) -> Overview:
    """The overview page's numbers: the last hour's rates and percentiles, and per-bucket charts."""
    now = now or utcnow()
    since = now - WINDOW
    finished = finished_since(session=session, since=since)
    completed = [f for f in finished if f.status == JobStatus.COMPLETED.value]
    failed = len(finished) - len(completed)
    waits = [f.queue_wait_s for f in completed if f.queue_wait_s is not None]
    renders = [f.render_s for f in completed if f.render_s is not None]

    span = WINDOW / buckets
    done_per_bucket: list[list[Finished]] = [[] for _ in range(buckets)]
    for f in completed:
        index = min(int((f.completed_at - since) / span), buckets - 1)
        done_per_bucket[index].append(f)
    labels = [(since + span * (i + 1)).strftime("%H:%M") for i in range(buckets)]
    throughput = [(labels[i], float(len(b))) for i, b in enumerate(done_per_bucket)]
    latency = [
        (labels[i], percentile([f.latency_s for f in b if f.latency_s is not None], 50) or 0.0)
        for i, b in enumerate(done_per_bucket)
    ]
    return Overview(
        counts=counts_by_status(session=session),
        queues=queue_depths(session=session, now=now),
        jobs_per_minute=round(len(completed) / (WINDOW.total_seconds() / 60), 2),
        failure_rate=round(failed / len(finished), 4) if finished else None,
        queue_wait_p50=percentile(waits, 50),
        queue_wait_p95=percentile(waits, 95),
        render_p50=percentile(renders, 50),
        render_p95=percentile(renders, 95),
        throughput_chart=chart(throughput),
        latency_chart=chart(latency),
    )


@dataclass
class KeyUsage:
    key: ApiKey
    jobs: int
    gpu_seconds: float


def key_usage(*, session: Session, now: datetime | None = None) -> list[KeyUsage]:
    """Every key with its job count and GPU seconds (the summed length of its jobs' attempts; a
    running attempt counts up to now)."""
    now = now or utcnow()
    keys = list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
    jobs = dict(session.execute(select(Job.owner_id, func.count()).group_by(Job.owner_id)).all())
    seconds: dict[int, float] = {}
    for owner_id, started_at, ended_at in session.execute(
        select(Job.owner_id, JobAttempt.started_at, JobAttempt.ended_at).join(Job, Job.id == JobAttempt.job_id)
    ):
        seconds[owner_id] = seconds.get(owner_id, 0.0) + ((ended_at or now) - started_at).total_seconds()
    return [KeyUsage(k, int(jobs.get(k.id, 0)), round(seconds.get(k.id, 0.0), 2)) for k in keys]


@dataclass
class CompletedTimes:
    latency_s: list[float]
    queue_wait_s: list[float]
    step_s: list[float]


def completed_times(*, session: Session, limit: int = MAX_ROWS) -> CompletedTimes:
    """Latency (submit → completed), queue wait and mean denoising step time of the latest completed jobs."""
    rows = session.execute(
        select(Job.created_at, Job.started_at, Job.completed_at, Job.stage_timings, Job.num_inference_steps)
        .where(Job.status == JobStatus.COMPLETED.value)
        .order_by(Job.id.desc())
        .limit(limit)
    ).all()
    out = CompletedTimes([], [], [])
    for created_at, started_at, completed_at, timings, steps in rows:
        if completed_at is not None:
            out.latency_s.append((completed_at - created_at).total_seconds())
        if started_at is not None:
            out.queue_wait_s.append((started_at - created_at).total_seconds())
        denoising = (timings or {}).get(Stage.DENOISING)
        if denoising is not None and steps:
            out.step_s.append(float(denoising) / steps)
    return out
