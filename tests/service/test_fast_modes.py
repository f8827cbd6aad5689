"""Fast modes through the whole service: every preset and an explicit set of options, submitted over
HTTP, rendered by a real `vidq worker` (FP8 emulated on the CPU), recorded on the job and shown on
the dashboard."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from spec.acceleration import PRESETS
from tests.api.conftest import login
from tests.service.conftest import auth, finished, wait_for_job

pytestmark = pytest.mark.integration

STEPS = 8


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker):  # type: ignore[no-untyped-def]
    return start_worker(VIDQ_FP8_EMULATION="true")


def submit(api, key: str, acceleration) -> dict:  # type: ignore[no-untyped-def]
    body = {"prompt": "a red fox in the snow", "model": "tiny-wan", "num_inference_steps": STEPS, "seed": 3}
    if acceleration is not None:
        body["acceleration"] = acceleration
    response = api.post("/v1/videos", json=body, headers=auth(key))
    assert response.status_code == 202, response.text
    return response.json()


def test_every_preset_and_explicit_options_render_and_record_what_they_did(api, make_key) -> None:
    key = make_key()
    asks = {name: name for name in PRESETS} | {
        "default": None,
        "explicit": {"cache": "fbcache", "skip_steps": [2, 5], "fp8": True},
    }
    submitted = {name: submit(api, key, value) for name, value in asks.items()}
    assert submitted["default"]["acceleration"] is None and submitted["none"]["acceleration"] is None
    assert submitted["fast"]["acceleration"]["preset"] == "fast" and submitted["fast"]["acceleration"]["fp8"]
    jobs = {name: wait_for_job(api, key, job["id"], finished, timeout_s=240) for name, job in submitted.items()}
    for name, job in jobs.items():
        assert job["status"] == "completed", (name, job)
        result = job["acceleration_result"]
        assert result["steps_computed"] + result["steps_skipped"] == STEPS, (name, result)

    for name in ("default", "none"):
        assert jobs[name]["acceleration_result"]["steps_skipped"] == 0
        assert jobs[name]["acceleration_result"]["precision"] == "float32"
    balanced = jobs["balanced"]["acceleration_result"]
    assert balanced["preset"] == "balanced" and balanced["steps_skipped"] > 0 and balanced["precision"] == "float32"
    assert jobs["fast"]["acceleration_result"]["precision"] == "fp8-emulated"
    explicit = jobs["explicit"]["acceleration_result"]
    assert explicit["skipped_steps"] == [2, 5] and explicit["precision"] == "fp8-emulated"

    with TestClient(api.app) as browser:
        login(browser, make_key("ops", admin=True))
        page = browser.get(f"/admin/jobs/{jobs['balanced']['id']}").text
        assert "Acceleration" in page and "magcache" in page
        assert f"{balanced['steps_computed']} of {STEPS} steps computed" in page


@pytest.mark.parametrize(
    ("acceleration", "param"),
    [
        ("warp", "acceleration"),
        ({"cache": "magcache", "threshold": -0.5}, "acceleration.threshold"),
        ({"cache": "fbcache", "skip_steps": [0]}, "acceleration.skip_steps"),
        ({"turbo": True}, "acceleration.turbo"),
    ],
)
def test_bad_acceleration_is_a_422_naming_the_field(api, make_key, acceleration, param) -> None:
    body = {"prompt": "a fox", "model": "tiny-wan", "num_inference_steps": STEPS, "acceleration": acceleration}
    response = api.post("/v1/videos", json=body, headers=auth(make_key()))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == param


def test_models_say_which_fast_modes_they_offer(api, make_key) -> None:
    models = {m["id"]: m for m in api.get("/v1/models", headers=auth(make_key())).json()["data"]}
    assert set(models["wan2.1-t2v-1.3b"]["acceleration"]) == {"teacache", "magcache", "fbcache", "fp8"}
    assert models["ltx-video"]["acceleration"] == []  # diffusers-backed families: lossless only
    body = {"prompt": "a fox", "model": "ltx-video", "acceleration": "balanced"}
    response = api.post("/v1/videos", json=body, headers=auth(make_key()))
    assert response.status_code == 422 and response.json()["error"]["param"] == "acceleration.cache"


def test_a_preset_runs_on_a_two_expert_model(api, make_key) -> None:
    # Wan2.2 A14B has no MagCache calibration: "fast" resolves to the first-block cache (reset at
    # the expert switch) with FP8 on both experts, and magcache is a 422 naming the cache.
    key = make_key()
    body = {"prompt": "a red fox in the snow", "model": "tiny-wan2.2-t2v-a14b", "num_inference_steps": STEPS}
    response = api.post("/v1/videos", json=body | {"acceleration": {"cache": "magcache"}}, headers=auth(key))
    assert response.status_code == 422 and response.json()["error"]["param"] == "acceleration.cache"
    response = api.post("/v1/videos", json=body | {"acceleration": "fast", "seed": 3}, headers=auth(key))
    assert response.status_code == 202, response.text
    submitted = response.json()
    assert submitted["acceleration"]["cache"] == "fbcache" and submitted["acceleration"]["fp8"]
    job = wait_for_job(api, key, submitted["id"], finished, timeout_s=240)
    assert job["status"] == "completed", job
    result = job["acceleration_result"]
    assert result["preset"] == "fast" and result["precision"] == "fp8-emulated"
    assert result["steps_computed"] + result["steps_skipped"] == STEPS
    models = {m["id"]: m for m in api.get("/v1/models", headers=auth(key)).json()["data"]}
    assert set(models["wan2.2-t2v-a14b"]["acceleration"]) == {"teacache", "fbcache", "fp8"}
