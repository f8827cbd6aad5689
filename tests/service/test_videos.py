"""The job service end to end on the real stack: PostgreSQL, Redis, moto S3 and a `vidq worker` process."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import imageio.v3 as iio
import pytest
import redis

from jobs.events import ProgressEvent, StatusEvent, job_channel, parse_live_message
from jobs.settings import Settings
from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker):  # type: ignore[no-untyped-def]
    return start_worker()


def submit(api, key: str, **fields) -> dict:  # type: ignore[no-untyped-def]
    body = {"prompt": "a red fox in the snow", "model": "tiny-wan", **fields}
    response = api.post("/v1/videos", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


def test_submit_poll_and_download_the_video_through_a_presigned_url(api, make_key, tmp_path: Path) -> None:
    key = make_key()
    job = submit(api, key, size="96x64", num_frames=13, num_inference_steps=3, seed=7)
    assert job["status"] in ("queued", "in_progress") and job["id"].startswith("video_")
    assert job["seed"] == 7 and job["size"] == "96x64"

    job = wait_for_job(api, key, job["id"], finished)
    assert job["status"] == "completed", job
    assert job["progress"] == 100 and job["current_step"] == 3 and job["attempts"] == 1
    assert job["completed_at"] >= job["started_at"] >= job["created_at"]
    assert job["expires_at"] > job["completed_at"]
    assert {"text_encoding", "denoising", "decoding", "encoding", "uploading"} <= set(job["stage_timings"])

    response = api.get(f"/v1/videos/{job['id']}/content", headers=auth(key), follow_redirects=False)
    assert response.status_code == 302
    presigned = response.headers["location"]
    assert "X-Amz-Signature" in presigned and "X-Amz-Expires" in presigned
    video = httpx.get(presigned)
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    path = tmp_path / "video.mp4"
    path.write_bytes(video.content)
    frames = iio.imread(path)
    assert frames.shape == (13, 64, 96, 3)

    thumb = api.get(f"/v1/videos/{job['id']}/content?variant=thumbnail", headers=auth(key), follow_redirects=False)
    image = iio.imread(httpx.get(thumb.headers["location"]).content)
    assert image.shape == (64, 96, 3)


def test_every_step_is_published_live_in_order(api, make_key, service_settings: Settings) -> None:
    key = make_key()
    pubsub = redis.Redis.from_url(service_settings.redis_url).pubsub()
    pubsub.psubscribe(job_channel("*"))
    job = submit(api, key, num_inference_steps=6)
    wait_for_job(api, key, job["id"], finished)
    events = []
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "pmessage" and message["channel"].decode() == job_channel(job["id"]):
            events.append(parse_live_message(message["data"]))  # typed: StatusEvent or ProgressEvent
    pubsub.close()
    steps = [e.step for e in events if isinstance(e, ProgressEvent) and e.stage == "denoising" and e.step]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert isinstance(events[-1], StatusEvent) and events[-1].job.status == "completed"


def test_cancel_stops_a_running_job_within_a_step(api, make_key, service_settings: Settings) -> None:
    key = make_key()
    job = submit(api, key, size="96x64", num_frames=33, num_inference_steps=200)
    running = wait_for_job(api, key, job["id"], lambda j: j["current_step"] >= 1 or finished(j))
    assert running["status"] == "in_progress", "the job finished before it could be cancelled"
    response = api.post(f"/v1/videos/{job['id']}/cancel", headers=auth(key))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    at_cancel = response.json()["current_step"]

    final = wait_for_job(api, key, job["id"], lambda j: True)
    assert final["status"] == "cancelled" and final["current_step"] < 200
    assert final["current_step"] <= at_cancel + 1  # the worker's next step saw the cancel
    assert api.get(f"/v1/videos/{job['id']}/content", headers=auth(key)).status_code == 409
    # cancelling again is harmless; a finished job cannot be cancelled
    assert api.post(f"/v1/videos/{job['id']}/cancel", headers=auth(key)).status_code == 200


def test_a_failing_job_records_its_error_and_fails(api, make_key) -> None:
    key = make_key()
    # A registered model that this worker has not installed: the render fails on the worker.
    job = submit(api, key, model="wan2.1-t2v-1.3b", size="832x480", num_frames=5, num_inference_steps=1)
    job = wait_for_job(api, key, job["id"], finished)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "model_unavailable"
    assert "wan2.1-t2v-1.3b" in job["error"]["message"]
    assert api.get(f"/v1/videos/{job['id']}/content", headers=auth(key)).status_code == 409
    conflict = api.post(f"/v1/videos/{job['id']}/cancel", headers=auth(key))
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "not_cancellable"


def test_delete_removes_the_job_and_its_stored_results(api, make_key, service_settings: Settings) -> None:
    from jobs.storage import make_storage

    key = make_key()
    job = wait_for_job(api, key, submit(api, key)["id"], finished)
    assert job["status"] == "completed"
    storage = make_storage(service_settings)
    video_key = f"videos/{job['id']}/video.mp4"
    assert storage.exists(video_key)

    response = api.delete(f"/v1/videos/{job['id']}", headers=auth(key))
    assert response.status_code == 200
    assert response.json() == {"id": job["id"], "object": "video.deleted", "deleted": True}
    assert api.get(f"/v1/videos/{job['id']}", headers=auth(key)).status_code == 404
    assert not storage.exists(video_key)
    assert not storage.exists(f"videos/{job['id']}/thumbnail.jpg")


def test_adapters_render_and_a_warm_idle_worker_gets_the_next_job_on_its_own_queue(
    api, make_key, service_settings: Settings
) -> None:
    from safetensors.torch import save

    from engine.lora.synthetic import random_adapter
    from jobs.affinity import worker_queue
    from jobs.workers import make_worker_registry
    from spec.lora_keys import DIT_SHAPES

    key = make_key()
    data = save(random_adapter(DIT_SHAPES["tiny-wan"], 4, "distill", seed=1))
    upload = api.post(
        "/v1/loras",
        headers=auth(key),
        data={"name": "distill", "model": "tiny-wan", "num_inference_steps": "2", "guidance_scale": "1"},
        files={"file": ("distill.safetensors", data, "application/octet-stream")},
    )
    assert upload.status_code == 201, upload.text
    lora_id = upload.json()["id"]

    first = wait_for_job(api, key, submit(api, key, num_frames=5, loras=[{"id": lora_id}])["id"], finished)
    assert first["status"] == "completed", first
    assert (first["num_inference_steps"], first["guidance_scale"]) == (2, 1.0) and "lora" in first["stage_timings"]

    # the worker now publishes the adapter as warm, and is idle: the next job goes to its own queue
    registry = make_worker_registry(service_settings)
    deadline = time.monotonic() + 30
    while not any(lora_id in w.warm_loras and w.current_job is None for w in registry.list()):
        assert time.monotonic() < deadline, registry.list()
        time.sleep(0.1)
    (warm,) = [w for w in registry.list() if lora_id in w.warm_loras]

    # Any process's relay (the API's after its commit, or the worker's on its own pass) may publish the
    # job, possibly after the submit returns: watch the broker itself for the render message's push.
    pushes: list[str] = []
    watching = threading.Event()
    watching.set()

    def watch() -> None:
        with redis.Redis.from_url(service_settings.redis_url).monitor() as monitor:
            while watching.is_set():
                command = monitor.next_command()["command"]
                if command.upper().startswith("LPUSH"):
                    pushes.append(command)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.5)  # MONITOR subscribed before the job exists (not a timed assertion)
    second = submit(api, key, num_frames=5, loras=[{"id": lora_id}])
    deadline = time.monotonic() + 30
    while not [p for p in pushes if second["id"] in p]:
        assert time.monotonic() < deadline, pushes
        time.sleep(0.1)
    watching.clear()
    (push,) = [p for p in pushes if second["id"] in p]  # published once, to the warm worker's own queue
    assert push.split()[1] == worker_queue(warm.worker_id), push
    second = wait_for_job(api, key, second["id"], finished)
    assert second["status"] == "completed", second  # the worker consumes its own queue
