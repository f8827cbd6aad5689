"""`VIDQ_LOG_FORMAT=json`: every line that `vidq api` and `vidq worker` write while serving a job is a
JSON object, and the lines about the job carry its id (uvicorn's access lines included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from jobs.settings import Settings
from tests.service.conftest import auth, finished, wait_for_job
from tests.service.processes import VIDQ, WorkerProcess, settings_env
from vidq.embedded import free_port

pytestmark = pytest.mark.integration


def parse_every_line(text: str, source: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{source} line {number} is not JSON: {line!r}")
    return records


def test_api_and_worker_write_only_json_with_the_job_id(service_settings: Settings, make_key, tmp_path: Path) -> None:
    port = free_port()
    api_log = (tmp_path / "api.log").open("w")
    api = subprocess.Popen(
        [VIDQ, "api", "--port", str(port)],
        env=settings_env(service_settings, VIDQ_LOG_FORMAT="json"),
        stdout=api_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = WorkerProcess(service_settings, tmp_path / "worker.log", VIDQ_LOG_FORMAT="json")
    try:
        worker.wait_ready()
        key = make_key("json-logs")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and api.poll() is None, (tmp_path / "api.log").read_text()
                time.sleep(0.1)
            job = client.post(
                "/v1/videos", headers=auth(key), json={"prompt": "a fox", "model": "tiny-wan", "num_inference_steps": 2}
            ).json()
            done = wait_for_job(client, key, job["id"], finished)
            assert done["status"] == "completed", done
            assert client.get("/v1/videos/video_0000000000000000000000000", headers=auth(key)).status_code == 404
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGTERM)
            api.wait(timeout=30)
        api_log.close()
        worker.stop()

    api_records = parse_every_line((tmp_path / "api.log").read_text(), "api")
    worker_records = parse_every_line(worker.log(), "worker")
    for record in api_records + worker_records:
        assert {"ts", "level", "logger", "message", "job_id"} <= record.keys(), record

    access = [r for r in api_records if r["logger"] == "uvicorn.access"]
    about_job = [r for r in access if r["path"].startswith(f"/v1/videos/{job['id']}")]
    assert about_job and all(r["job_id"] == job["id"] for r in about_job)
    assert any(r["status"] == 404 for r in access)  # status and route are fields, not only text
    assert any(r["job_id"] == job["id"] for r in worker_records if r["logger"].startswith("worker"))
    assert any("ready" in r["message"] for r in worker_records)  # Celery's own lines are JSON too
    assert any(r["logger"] == "celery.app.trace" and r["job_id"] == job["id"] for r in worker_records)
