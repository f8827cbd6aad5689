"""`vidq api` and `vidq worker` serving one job, as deployed: every line of their JSON logs is a JSON
object and the lines about the job carry its id; the worker's own /metrics counts the render."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.settings import Settings
from tests.service.conftest import auth, finished, wait_for_job
from tests.service.processes import VIDQ, WorkerProcess, settings_env
from vidq.embedded import free_port

pytestmark = pytest.mark.integration


@dataclass
class Served:
    job: dict[str, Any]
    api_log: str
    worker_log: str
    worker_metrics: str


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def served(service_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Served:
    from jobs.db import make_engine, make_session_factory, session_scope
    from jobs.keys import create_key

    tmp = tmp_path_factory.mktemp("served")
    port, metrics_port = free_port(), free_port()
    with (tmp / "api.log").open("w") as api_log:
        api = subprocess.Popen(
            [VIDQ, "api", "--port", str(port)],
            env=settings_env(service_settings, VIDQ_LOG_FORMAT="json"),
            stdout=api_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(
        service_settings, tmp / "worker.log", VIDQ_LOG_FORMAT="json", VIDQ_WORKER_METRICS_PORT=str(metrics_port)
    )
    try:
        worker.wait_ready()
        wait_until_up(f"http://127.0.0.1:{port}/healthz", api, tmp / "api.log")
        with session_scope(make_session_factory(make_engine(service_settings))) as session:
            key = create_key(session=session, name="served").plaintext
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            body = {"prompt": "a fox", "model": "tiny-wan", "num_inference_steps": 3}
            job = client.post("/v1/videos", headers=auth(key), json=body).json()
            job = wait_for_job(client, key, job["id"], finished)
            assert client.get("/v1/videos/video_0000000000000000000000000", headers=auth(key)).status_code == 404
        worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    finally:
        stop(api)
        worker.stop()
    return Served(job, (tmp / "api.log").read_text(), worker.log(), worker_metrics)


def parse_every_line(text: str, source: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{source} line {number} is not JSON: {line!r}")
    return records


def test_api_and_worker_write_only_json_with_the_job_id(served: Served) -> None:
    job = served.job
    assert job["status"] == "completed", job
    api_records = parse_every_line(served.api_log, "api")
    worker_records = parse_every_line(served.worker_log, "worker")
    for record in api_records + worker_records:
        assert {"ts", "level", "logger", "message", "job_id"} <= record.keys(), record

    access = [r for r in api_records if r["logger"] == "uvicorn.access"]
    about_job = [r for r in access if r["path"].startswith(f"/v1/videos/{job['id']}")]
    assert about_job and all(r["job_id"] == job["id"] for r in about_job)
    assert any(r["status"] == 404 for r in access)  # status and route are fields, not only text
    assert any(r["job_id"] == job["id"] for r in worker_records if r["logger"].startswith("worker"))
    assert any("ready" in r["message"] for r in worker_records)  # Celery's own lines are JSON too
    assert any(r["logger"] == "celery.app.trace" and r["job_id"] == job["id"] for r in worker_records)


def test_the_worker_counts_its_render_steps_and_stages(served: Served) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(served.worker_metrics)
        for s in family.samples
    }

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, lbls), v in samples.items() if n == name and set(labels.items()) <= set(lbls))

    assert total("vidq_jobs_finished_total", model="tiny-wan", outcome="completed") == 1
    assert total("vidq_denoising_step_seconds_count", model="tiny-wan") == 3  # one observation per step
    assert total("vidq_queue_wait_seconds_count", model="tiny-wan") == 1
    for stage in served.job["stage_timings"]:
        assert total("vidq_stage_seconds_count", model="tiny-wan", stage=stage) == 1, stage
    assert total("vidq_stage_seconds_sum", stage="denoising") == pytest.approx(served.job["stage_timings"]["denoising"])
