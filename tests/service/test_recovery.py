"""Nothing is lost when a worker or Redis dies: PostgreSQL is the source of truth and the sweeper
repairs what the broker forgot. Each test controls its own worker processes."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from api.app import create_app
from tests.api.conftest import relay_now
from tests.service.conftest import auth, finished, wait_for_job

# Jobs other modules left queued would be published again (nobody claimed them) and rendered first.
pytestmark = pytest.mark.usefixtures("no_backlog")

BODY = {"prompt": "waves on a beach", "model": "tiny-wan"}


def test_a_job_whose_worker_is_killed_is_completed_by_another_worker(api, make_key, start_worker) -> None:
    key = make_key()
    first = start_worker()
    job = api.post(
        "/v1/videos", json={**BODY, "size": "96x64", "num_frames": 33, "num_inference_steps": 200}, headers=auth(key)
    ).json()
    running = wait_for_job(api, key, job["id"], lambda j: j["current_step"] >= 1 or finished(j))
    assert running["status"] == "in_progress", "the job finished before the worker could be killed"
    first.kill()  # SIGKILL: no ack, no cleanup, heartbeats stop

    second = start_worker()
    done = wait_for_job(api, key, job["id"], finished, timeout_s=180)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2
    assert "attempt 2 on" in second.log()
    second.stop()


def test_a_job_survives_redis_losing_its_message(api, make_key, start_worker, service_settings, redis_db) -> None:
    key = make_key()
    job = api.post("/v1/videos", json=BODY, headers=auth(key)).json()  # no worker is running yet
    relay_now(api)  # the relay thread publishes it soon after the commit; now, for certain
    broker = redis.Redis.from_url(service_settings.redis_url)
    assert broker.llen("gpu.wan") >= 1
    redis_db.flush()  # as if Redis restarted without persistence (our own database, marker kept)
    assert broker.llen("gpu.wan") == 0

    worker = start_worker()
    done = wait_for_job(api, key, job["id"], finished, timeout_s=180)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1
    worker.stop()


def test_readiness_names_the_dependency_that_is_down(service_settings) -> None:
    broken = service_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0", "sweeper_enabled": False})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["param"] == "broker"
    assert client.get("/healthz").status_code == 200
