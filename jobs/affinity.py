"""Adapter affinity: a job with LoRA adapters goes to an idle worker that holds them warm.

Workers publish the adapters their engines hold in memory (``WorkerStatus.warm_loras``) and each
GPU worker also consumes a queue of its own (``worker_queue``). When a job with adapters is
published and an idle, live worker of its queue holds some of them, the message goes to that
worker's own queue; otherwise (every such worker busy, none warm) to the shared queue as always,
so no job ever waits for affinity. If that worker dies before taking it, the sweeper publishes
the job again ``VIDQ_REDISPATCH_AFTER_S`` after (routed afresh: another warm worker, or the shared
queue), as it does for any job nobody claimed.
"""

from __future__ import annotations

from collections.abc import Callable

from jobs.models import Job
from jobs.workers import WorkerStatus

WORKER_QUEUE_PREFIX = "worker."


def worker_queue(worker_id: str) -> str:
    """The queue only the worker `worker_id` consumes."""
    return WORKER_QUEUE_PREFIX + worker_id


def preferred_queue(job: Job, workers: list[WorkerStatus], *, heartbeat_timeout_s: float) -> str | None:
    """The own queue of the idle worker holding most of `job`'s adapters warm, or None (shared queue)."""
    wanted = {entry[key] for entry in job.loras or () for key in ("id", "id_2") if key in entry}
    if not wanted:
        return None
    idle = [
        worker
        for worker in workers
        if worker.current_job is None
        and not worker.is_lost(timeout_s=heartbeat_timeout_s)
        and job.queue in worker.queues
        and worker_queue(worker.worker_id) in worker.queues
    ]
    best = max(idle, key=lambda worker: len(wanted & set(worker.warm_loras)), default=None)
    if best is None or not wanted & set(best.warm_loras):
        return None
    return worker_queue(best.worker_id)


def affinity_router(
    workers: Callable[[], list[WorkerStatus]], *, heartbeat_timeout_s: float
) -> Callable[[Job], str | None]:
    """A `route` for `jobs.dispatch.relay_outbox` over the live worker records."""

    def route(job: Job) -> str | None:
        if not job.loras:
            return None
        return preferred_queue(job, workers(), heartbeat_timeout_s=heartbeat_timeout_s)

    return route
