"""Live progress and the Python client against the real stack served over real HTTP: the event
stream of a running job, `Client.create_and_wait`, and `vidq submit --wait`."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import imageio.v3 as iio
import pytest

from jobs.settings import Settings
from tests.service.conftest import auth
from tests.service.processes import VIDQ, WorkerProcess, settings_env
from vidq.client import Client, ConflictError, InvalidRequestError, NotFoundError, iter_sse

pytestmark = pytest.mark.integration

BODY = {"prompt": "a kite over a hill", "model": "tiny-wan", "size": "96x64", "num_frames": 9}


@pytest.fixture(scope="module")
def ensure_worker(start_worker, no_backlog) -> Callable[[], WorkerProcess]:  # type: ignore[no-untyped-def]
    """Starts the module's worker on first use, so a test can subscribe before any job can start."""
    started: list[WorkerProcess] = []

    def _ensure() -> WorkerProcess:
        if not started:
            started.append(start_worker())
        return started[0]

    return _ensure


def read_events(client: httpx.Client, video_id: str, out: list[tuple[str, dict[str, Any]]]) -> None:
    with client.stream("GET", f"/v1/videos/{video_id}/events", timeout=httpx.Timeout(10, read=60)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event, data in iter_sse(response.iter_lines()):
            out.append((event, data))


def test_an_sse_client_sees_every_step_of_a_real_job_in_order(live_api, make_key, ensure_worker) -> None:
    key = make_key()
    with httpx.Client(base_url=live_api, headers=auth(key)) as client:
        job = client.post("/v1/videos", json={**BODY, "num_inference_steps": 6}).json()
        events: list[tuple[str, dict[str, Any]]] = []
        reader = threading.Thread(target=read_events, args=(client, job["id"], events))
        reader.start()
        while (
            not events and reader.is_alive()
        ):  # subscribed, and the current state has arrived: now let a worker take the job
            reader.join(0.02)
        ensure_worker()
        reader.join(timeout=120)
        assert not reader.is_alive(), "the stream did not close after the job ended"

        assert events[0] == ("state", events[0][1]) and events[0][1]["status"] == "queued"
        assert events[0][1]["queue_position"] >= 1
        assert all("status" in data for _, data in events)
        steps = [
            data for event, data in events if event == "progress" and data["stage"] == "denoising" and data["step"]
        ]
        assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
        assert all(s["total_steps"] == 6 and "percent" in s and "elapsed_s" in s for s in steps)
        assert steps[-1]["eta_seconds"] == 0 and steps[0]["eta_seconds"] > 0
        assert [data["status"] for event, data in events if event == "status"] == ["in_progress", "completed"]
        stages = [data["stage"] for event, data in events if event == "progress"]
        assert stages.index("text_encoding") < stages.index("denoising") < stages.index("uploading")
        final = events[-1][1]
        assert final["status"] == "completed" and final["stage_timings"] and final["eta_seconds"] is None

        # a finished job's stream is its final state, then the end
        again: list[tuple[str, dict[str, Any]]] = []
        read_events(client, job["id"], again)
        assert [(e, d["status"]) for e, d in again] == [("state", "completed")]

        assert client.get(f"/v1/videos/{job['id']}/events", headers=auth(make_key())).status_code == 404
        assert client.get(f"/v1/videos/{job['id']}/events", headers={"Authorization": ""}).status_code == 401


def test_create_and_wait_returns_a_downloadable_video(live_api, make_key, ensure_worker, tmp_path: Path) -> None:
    ensure_worker()
    seen: list[dict[str, Any]] = []
    with Client(live_api, make_key()) as client:
        video = client.create_and_wait(
            BODY["prompt"], model="tiny-wan", size="96x64", num_frames=9, num_inference_steps=3, on_progress=seen.append
        )
        assert video["status"] == "completed" and video["progress"] == 100
        steps = [e["step"] for e in seen if e.get("stage") == "denoising" and e.get("step")]
        assert steps and steps == list(range(steps[0], 4))  # live steps, in order, from when it subscribed
        assert seen[-1]["status"] == "completed"
        path = client.download(video["id"], tmp_path / "kite.mp4")
        assert iio.imread(path).shape == (9, 64, 96, 3)
        thumb = client.download(video["id"], tmp_path / "kite.jpg", variant="thumbnail")
        assert iio.imread(thumb).shape == (64, 96, 3)
        assert client.retrieve(video["id"])["id"] == video["id"]
        assert video["id"] in [v["id"] for v in client.list(limit=5)["data"]]

        with pytest.raises(NotFoundError) as missing:
            client.retrieve("video_doesnotexist")
        assert missing.value.status_code == 404 and missing.value.param == "video_id"
        with pytest.raises(InvalidRequestError) as invalid:
            client.create("a cat", model="tiny-wan", size="1920x1080")
        assert invalid.value.param == "size" and invalid.value.code == "invalid_parameter"

        queued = client.create("a cat", model="tiny-wan", num_inference_steps=200, size="96x64", num_frames=33)
        with pytest.raises(ConflictError):
            client.download(queued["id"], tmp_path / "not-yet.mp4")
        assert client.cancel(queued["id"])["status"] == "cancelled"
        assert client.delete(queued["id"])["deleted"] is True


def test_vidq_submit_wait_draws_progress_and_downloads(
    live_api, make_key, ensure_worker, service_settings: Settings, tmp_path: Path
) -> None:
    ensure_worker()
    out = tmp_path / "submitted.mp4"
    env = settings_env(service_settings, VIDQ_BASE_URL=live_api, VIDQ_API_KEY=make_key())
    command = [VIDQ, "submit", "--prompt", "a lantern at dusk", "--size", "96x64", "--num-frames", "9"]
    result = subprocess.run(
        [*command, "--steps", "3", "--wait", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "100%" in result.stderr and "denoising" in result.stderr
    assert iio.imread(out).shape == (9, 64, 96, 3)
