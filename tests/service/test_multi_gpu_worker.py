"""A worker that runs each job across a group of processes (VIDQ_WORKER_GPUS), on the CPU with
gloo: the job completes with the same video a one-process worker makes for the same seed."""

from __future__ import annotations

import time

import httpx
import imageio.v3 as iio
import pytest

from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration

BODY = {"prompt": "a paper boat on a river", "model": "tiny-wan", "num_inference_steps": 3, "seed": 11}


def _video_bytes(api, key: str, job_id: str) -> bytes:  # type: ignore[no-untyped-def]
    location = api.get(f"/v1/videos/{job_id}/content", headers=auth(key), follow_redirects=False).headers["location"]
    return httpx.get(location).content


def test_a_job_for_two_gpus_waits_for_a_two_gpu_worker_and_renders_the_same_video(api, make_key, start_worker) -> None:
    key = make_key()
    single = start_worker()
    first = wait_for_job(api, key, api.post("/v1/videos", json=BODY, headers=auth(key)).json()["id"], finished)
    assert first["status"] == "completed" and first["num_gpus"] == 1, first
    pair_job = api.post("/v1/videos", json={**BODY, "num_gpus": 2}, headers=auth(key)).json()
    time.sleep(3)  # a one-GPU worker never takes it: it routes to the gpu.wan.x2 queue
    assert api.get(f"/v1/videos/{pair_job['id']}", headers=auth(key)).json()["status"] == "queued"
    single.stop()

    group = start_worker(VIDQ_WORKER_GPUS="2", VIDQ_WORKER_CFG_PARALLEL="true", VIDQ_COLLECTIVE_TIMEOUT_S="60")
    second = wait_for_job(api, key, pair_job["id"], finished)
    group.stop()
    assert second["status"] == "completed" and second["num_gpus"] == 2, second
    assert second["current_step"] == 3
    assert "died" not in group.log()
    # same seed and weights, float32 on the CPU: the frames agree to within H.264's rounding
    single_frames = iio.imread(_video_bytes(api, key, first["id"]), extension=".mp4").astype(float)
    parallel_frames = iio.imread(_video_bytes(api, key, second["id"]), extension=".mp4").astype(float)
    assert single_frames.shape == parallel_frames.shape == (9, 64, 64, 3)
    assert abs(single_frames - parallel_frames).mean() < 1.0  # of 255
