"""Workers publish their own status to Redis with a TTL; a worker whose heartbeats stop is lost."""

from __future__ import annotations

import time

import redis

from jobs.workers import RedisWorkerRegistry
from worker.status import StatusPublisher, WorkerActivity, gpu_stats


def test_a_worker_publishes_its_job_and_step_and_is_lost_when_it_stops(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    registry = RedisWorkerRegistry(client, ttl_s=60)
    activity = WorkerActivity()
    publisher = StatusPublisher(
        registry=registry,
        worker_id="host-a:123",
        activity=activity,
        queues=["gpu.wan"],
        served_models=["tiny-wan"],
        loaded_models=lambda: ["tiny-wan"],
        interval_s=0.1,
    ).start()
    try:
        activity.begin("video_abc")
        activity.update(stage="denoising", step=3, total_steps=8)
        time.sleep(0.3)
        status = next(w for w in registry.list() if w.worker_id == "host-a:123")
        assert (status.current_job, status.stage, status.step, status.total_steps) == ("video_abc", "denoising", 3, 8)
        assert status.loaded_models == ["tiny-wan"]
        assert status.gpus == gpu_stats()  # [] on a CPU host: the page says "CPU"
        assert not status.is_lost(timeout_s=1.0)
        assert 0 < client.ttl("vidq:worker:host-a:123") <= 60
    finally:
        publisher.stop()
    time.sleep(0.3)
    status = next(w for w in registry.list() if w.worker_id == "host-a:123")
    assert status.is_lost(timeout_s=0.2)
