"""Image-to-video end to end on the real stack (PostgreSQL, Redis, moto S3, a `vidq worker` process):
the input image travels as a multipart file part, is stored with the job, and the worker renders
from it; the first decoded frame follows the image, a text-only render's does not."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration

# tiny-wan2.2-ti2v takes an optional image; its VAE is made to roughly reconstruct (engine.models.tiny)
RENDER = {"model": "tiny-wan2.2-ti2v", "size": "96x64", "num_frames": 9, "num_inference_steps": 4, "seed": 3}


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker, no_backlog):  # type: ignore[no-untyped-def]
    return start_worker(VIDQ_WORKER_MODELS="tiny-wan2.2-ti2v")


def gradient_image() -> Image.Image:
    yy, xx = np.mgrid[0:64, 0:96] / 96
    return Image.fromarray((np.stack([xx, yy, 1 - xx * yy], axis=-1) * 255).astype(np.uint8))


def first_frame(api, key: str, job_id: str, tmp_path: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    job = wait_for_job(api, key, job_id, finished, timeout_s=300)
    assert job["status"] == "completed", (job["error"], job)
    response = api.get(f"/v1/videos/{job_id}/content", headers=auth(key), follow_redirects=False)
    path = tmp_path / f"{job_id}.mp4"
    path.write_bytes(httpx.get(response.headers["location"]).content)
    return iio.imread(path)[0].astype(np.float64)  # [64, 96, 3]


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_an_image_to_video_render_starts_from_its_input_image(api, make_key, tmp_path: Path) -> None:
    key = make_key()
    image = gradient_image()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with_image = api.post(
        "/v1/videos",
        data={"prompt": "the colours drift slowly", **{k: str(v) for k, v in RENDER.items()}},
        files={"input_reference": ("first.png", buffer.getvalue(), "image/png")},
        headers=auth(key),
    )
    assert with_image.status_code == 202, with_image.text
    text_only = api.post("/v1/videos", json={"prompt": "the colours drift slowly", **RENDER}, headers=auth(key))
    assert text_only.status_code == 202, text_only.text

    reference = np.asarray(image).astype(np.float64)
    i2v = first_frame(api, key, with_image.json()["id"], tmp_path)
    t2v = first_frame(api, key, text_only.json()["id"], tmp_path)
    assert i2v.shape == t2v.shape == reference.shape
    # measured on this checkpoint: about 0.6 against -0.1
    assert correlation(i2v, reference) > 0.35
    assert correlation(i2v, reference) > correlation(t2v, reference) + 0.25
    assert np.abs(i2v - reference).mean() < np.abs(t2v - reference).mean()
