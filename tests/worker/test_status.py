"""Workers publish their own status to Redis with a TTL; a worker whose heartbeats stop is lost."""

from __future__ import annotations

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
    )
    activity.begin("video_abc")
    activity.update(stage="denoising", step=3, total_steps=8)
    publisher.publish_once()  # one heartbeat, as the publisher's thread beats every interval_s
    status = next(w for w in registry.list() if w.worker_id == "host-a:123")
    assert (status.current_job, status.stage, status.step, status.total_steps) == ("video_abc", "denoising", 3, 8)
    assert status.loaded_models == ["tiny-wan"]
    assert status.gpus == gpu_stats()  # [] on a CPU host: the page says "CPU"
    assert 0 < client.ttl("vidq:worker:host-a:123") <= 60
    # Lost is judged on the clock given: within the timeout of its last beat it is alive, after it lost.
    assert not status.is_lost(timeout_s=1.0, now=status.heartbeat_at + 0.5)
    assert status.is_lost(timeout_s=1.0, now=status.heartbeat_at + 1.5)


def test_the_publishers_thread_beats_until_stopped(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    registry = RedisWorkerRegistry(client, ttl_s=60)
    publisher = StatusPublisher(
        registry=registry,
        worker_id="host-b:456",
        activity=WorkerActivity(),
        queues=["gpu.wan"],
        served_models=["tiny-wan"],
        loaded_models=lambda: [],
        interval_s=60,
    ).start()  # start() beats once before its thread waits
    publisher.stop()
    assert any(w.worker_id == "host-b:456" for w in registry.list())
    client.delete("vidq:worker:host-b:456")  # no phantom worker for other tests' dashboards
