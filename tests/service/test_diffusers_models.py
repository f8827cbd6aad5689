"""A model served through the diffusers backend, end to end on the real stack.

PostgreSQL, Redis, moto S3 and a `vidq worker` process serving only `tiny-ltx-video` (queue
`gpu.ltx`) and `tiny-cogvideox-i2v` (`gpu.cogvideox`): the job renders on diffusers' own pipeline
inside the engine, with every step published live and a cancel that stops it within a step, like a
Wan job; image-to-video jobs take the job's `input_reference`.
"""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
import redis
from PIL import Image

from jobs.events import ProgressEvent, StatusEvent, job_channel, parse_live_message
from jobs.settings import Settings
from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration

MODEL = "tiny-ltx-video"
I2V_MODEL = "tiny-cogvideox-i2v"


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker, no_backlog):  # type: ignore[no-untyped-def]
    return start_worker(VIDQ_WORKER_MODELS=f"{MODEL},{I2V_MODEL}")


def submit(api, key: str, **fields) -> dict:  # type: ignore[no-untyped-def]
    body = {"prompt": "a red fox in the snow", "model": MODEL, **fields}
    response = api.post("/v1/videos", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


def test_an_ltx_job_renders_with_every_step_published(
    api, make_key, service_settings: Settings, tmp_path: Path
) -> None:
    key = make_key()
    pubsub = redis.Redis.from_url(service_settings.redis_url).pubsub()
    pubsub.psubscribe(job_channel("*"))
    job = submit(api, key, size="96x64", num_frames=17, num_inference_steps=4, seed=5)
    assert job["size"] == "96x64" and job["num_frames"] == 17  # 8k+1: LTX's frame rule

    job = wait_for_job(api, key, job["id"], finished)
    events = []
    while (message := pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "pmessage" and message["channel"].decode() == job_channel(job["id"]):
            events.append(parse_live_message(message["data"]))  # typed: StatusEvent or ProgressEvent
    pubsub.close()
    assert job["status"] == "completed", job["error"]
    assert job["current_step"] == 4 and job["progress"] == 100
    assert {"text_encoding", "denoising", "decoding", "encoding", "uploading"} <= set(job["stage_timings"])
    steps = [e.step for e in events if isinstance(e, ProgressEvent) and e.stage == "denoising" and e.step]
    assert steps == [1, 2, 3, 4]
    assert isinstance(events[-1], StatusEvent) and events[-1].job.status == "completed"

    response = api.get(f"/v1/videos/{job['id']}/content", headers=auth(key), follow_redirects=False)
    path = tmp_path / "ltx.mp4"
    path.write_bytes(httpx.get(response.headers["location"]).content)
    assert iio.imread(path).shape == (17, 64, 96, 3)


def test_an_ltx_job_is_refused_a_frame_count_off_its_rule(api, make_key) -> None:
    response = api.post(
        "/v1/videos", json={"prompt": "a fox", "model": MODEL, "num_frames": 13}, headers=auth(make_key())
    )
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "num_frames" and "8k+1" in response.json()["error"]["message"]


def test_cancel_stops_an_ltx_job_within_a_step(api, make_key) -> None:
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


def test_an_image_to_video_checkpoint_needs_an_image(api, make_key) -> None:
    response = api.post("/v1/videos", json={"prompt": "a fox", "model": "tiny-cogvideox-i2v"}, headers=auth(make_key()))
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "input_reference"


def png_gradient() -> bytes:
    yy, xx = np.mgrid[0:64, 0:96] / 96
    buffer = io.BytesIO()
    Image.fromarray((np.stack([xx, yy, 1 - xx * yy], axis=-1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def frames_of(api, key: str, job_id: str, tmp_path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    job = wait_for_job(api, key, job_id, finished)
    assert job["status"] == "completed", job["error"]
    response = api.get(f"/v1/videos/{job_id}/content", headers=auth(key), follow_redirects=False)
    path = tmp_path / f"{job_id}.mp4"
    path.write_bytes(httpx.get(response.headers["location"]).content)
    return iio.imread(path)


@pytest.mark.parametrize("model", [MODEL, I2V_MODEL])
def test_image_to_video_jobs_render_from_their_input_reference(api, make_key, model: str, tmp_path: Path) -> None:
    key = make_key()
    size = "96x64" if model == MODEL else "64x64"  # CogVideoX-I2V's learned position embeddings fix its size
    render = {"prompt": "the colours drift", "model": model, "size": size, "num_frames": 9, "seed": 4}
    with_image = api.post(
        "/v1/videos",
        data={k: str(v) for k, v in render.items()} | {"num_inference_steps": "2"},
        files={"input_reference": ("first.png", png_gradient(), "image/png")},
        headers=auth(key),
    )
    assert with_image.status_code == 202, with_image.text
    frames = frames_of(api, key, with_image.json()["id"], tmp_path)
    width, height = (int(v) for v in size.split("x"))
    assert frames.shape == (9, height, width, 3)
    if model == MODEL:  # LTX also renders without an image, from the same weights: the image changed the video
        text_only = submit(api, key, **{k: v for k, v in render.items() if k != "model"}, num_inference_steps=2)
        assert not np.array_equal(frames, frames_of(api, key, text_only["id"], tmp_path))
