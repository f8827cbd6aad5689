"""Adapter affinity: which queue a job with adapters is published to."""

from __future__ import annotations

import time

from jobs.affinity import preferred_queue, worker_queue
from jobs.models import Job
from jobs.workers import WorkerStatus


def worker(name: str, warm: list[str], *, busy: bool = False, lost: bool = False) -> WorkerStatus:
    now = time.time()
    return WorkerStatus(
        worker_id=name,
        host="h",
        pid=1,
        heartbeat_at=now - (600 if lost else 0),
        started_at=now,
        queues=["gpu.wan", "webhooks", worker_queue(name)],
        current_job="video_x" if busy else None,
        warm_loras=warm,
    )


def job(*ids: str) -> Job:
    return Job(id="video_1", queue="gpu.wan", loras=[{"id": i, "name": i, "scale": 1.0} for i in ids] or None)


def route(j: Job, workers: list[WorkerStatus]) -> str | None:
    return preferred_queue(j, workers, heartbeat_timeout_s=60)


def test_an_idle_worker_holding_the_adapters_is_preferred() -> None:
    workers = [worker("cold", []), worker("half", ["lora_a"]), worker("warm", ["lora_a", "lora_b"])]
    assert route(job("lora_a", "lora_b"), workers) == worker_queue("warm")


def test_no_job_waits_for_a_busy_or_lost_warm_worker() -> None:
    assert route(job("lora_a"), [worker("cold", []), worker("warm", ["lora_a"], busy=True)]) is None
    assert route(job("lora_a"), [worker("cold", []), worker("warm", ["lora_a"], lost=True)]) is None
    assert route(job("lora_a"), [worker("cold", ["lora_z"])]) is None  # nobody warm: the shared queue
    assert route(job(), [worker("warm", ["lora_a"])]) is None  # no adapters, no affinity


def test_a_worker_of_another_queue_is_never_chosen() -> None:
    other = worker("warm", ["lora_a"])
    other.queues = ["gpu.ltx", worker_queue("warm")]
    assert route(job("lora_a"), [other]) is None


def test_both_files_of_a_two_expert_pair_count() -> None:
    pair = Job(
        id="video_2",
        queue="gpu.wan",
        loras=[{"id": "lora_hi", "name": "hi", "scale": 1.0, "id_2": "lora_lo", "name_2": "lo", "scale_2": 1.0}],
    )
    workers = [worker("high", ["lora_hi"]), worker("both", ["lora_hi", "lora_lo"])]
    assert route(pair, workers) == worker_queue("both")
    assert route(pair, [worker("low", ["lora_lo"])]) == worker_queue("low")
