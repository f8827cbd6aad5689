"""compose.yaml's services, started outside containers with compose.yaml's own commands and
environment (production, JSON logs, `vidq api --workers 2`, worker metrics), pointed at this
machine's PostgreSQL, Redis and moto S3. One job goes through; then:

- every line the API and the worker wrote is JSON, and the lines about the job carry its id;
- the API's counters are summed over its two processes and never go down between scrapes;
- the worker's own /metrics counted the render, its steps and its stages;
- `vidq migrate` and the webhook sender start from the same file too.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobs.migrate import head_revision
from jobs.settings import Settings
from tests.conftest import create_database, drop_database, sqlalchemy_url
from tests.deploy.compose import load, service_command, service_environment
from tests.service.conftest import auth, finished, wait_for_job
from tests.service.processes import VIDQ
from vidq.embedded import free_port

pytestmark = pytest.mark.integration


def compose_process_env(
    settings: Settings, service: str, tmp: Path, database_url: str, **overrides: str
) -> dict[str, str]:
    """The service's environment from compose.yaml, with the container host names swapped for this
    machine's test services (and ports that do not collide)."""
    secrets = {"VIDQ_SECRET_KEY": "compose-test-secret", "MINIO_ROOT_PASSWORD": "testing", "MINIO_ROOT_USER": "testing"}
    env = service_environment(load(), service, secrets)
    env |= {
        "VIDQ_DATABASE_URL": database_url,
        "VIDQ_REDIS_URL": settings.redis_url,
        "VIDQ_S3_ENDPOINT": settings.s3_endpoint,
        "VIDQ_S3_PUBLIC_ENDPOINT": settings.s3_endpoint,
        "VIDQ_MODELS_DIR": str(settings.models_dir),
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
        "VIDQ_DEVICE": "cpu",
        **overrides,
    }
    assert env["VIDQ_ENVIRONMENT"] == "production" and env["VIDQ_LOG_FORMAT"] == "json"
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIDQ_")}
    return base | env | {"PYTHONUNBUFFERED": "1"}


def compose_command(service: str, **replace: str) -> list[str]:
    command = service_command(load(), service, {})
    assert command[0] == "vidq"
    command[0] = VIDQ
    for flag, value in replace.items():
        command[command.index(flag) + 1] = value
    return command


@dataclass
class Process:
    proc: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], log_path: Path) -> Process:
        with log_path.open("w") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(proc, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, ready, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while not ready():
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"not ready after {timeout_s}s:\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


@dataclass
class Stack:
    job: dict[str, Any]
    logs: dict[str, str]
    api_scrapes: list[str] = field(default_factory=list)
    worker_metrics: str = ""
    healthz_calls: list[int] = field(default_factory=list)
    migrate_output: str = ""


def up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def stack(service_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from jobs.db import make_engine, make_session_factory, session_scope
    from jobs.keys import create_key

    tmp = tmp_path_factory.mktemp("compose")
    # A database of its own, empty: compose's `vidq migrate` creates the schema, and no other
    # module's unfinished jobs queue ahead of this one.
    db_name = create_database()
    database_url = sqlalchemy_url(db_name)
    port, worker_metrics, webhook_metrics = free_port(), free_port(), free_port()
    migrate = subprocess.run(
        compose_command("migrate"),
        env=compose_process_env(service_settings, "migrate", tmp, database_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    api = Process.start(
        compose_command("api", **{"--port": str(port), "--host": "127.0.0.1"}),
        compose_process_env(
            service_settings, "api", tmp, database_url, PROMETHEUS_MULTIPROC_DIR=str(tmp / "prometheus")
        ),
        tmp / "api.log",
    )
    worker = Process.start(
        compose_command("worker"),
        # production serves no random-weight model unless it is named
        compose_process_env(
            service_settings,
            "worker",
            tmp,
            database_url,
            VIDQ_WORKER_METRICS_PORT=str(worker_metrics),
            VIDQ_WORKER_MODELS="tiny-wan",
        ),
        tmp / "worker.log",
    )
    webhooks = Process.start(
        compose_command("webhooks"),
        compose_process_env(
            service_settings, "webhooks", tmp, database_url, VIDQ_WORKER_METRICS_PORT=str(webhook_metrics)
        ),
        tmp / "webhooks.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for process in (worker, webhooks):
            process.wait_for(lambda p=process: " ready." in p.log())
        api.wait_for(lambda: up(f"{base}/readyz"))
        engine = make_engine(Settings(database_url=database_url))
        with session_scope(make_session_factory(engine)) as session:
            key = create_key(session=session, name="compose").plaintext
            admin_key = create_key(session=session, name="compose-ops", is_admin=True).plaintext
        engine.dispose()
        result = Stack(job={}, logs={}, migrate_output=migrate.stdout)
        with httpx.Client(base_url=base, timeout=30) as client:
            body = {"prompt": "a fox", "model": "tiny-wan", "num_inference_steps": 3}
            job = client.post("/v1/videos", headers=auth(key), json=body).json()
            result.job = wait_for_job(client, key, job["id"], finished)
            assert client.get("/v1/videos/video_0000000000000000000000000", headers=auth(key)).status_code == 404
        for _ in range(5):
            for _ in range(8):  # a new connection each time: either API process may take it
                assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            result.healthz_calls.append(8 + (result.healthz_calls[-1] if result.healthz_calls else 0))
            result.api_scrapes.append(httpx.get(f"{base}/metrics", headers=auth(admin_key), timeout=10).text)
        result.worker_metrics = httpx.get(f"http://127.0.0.1:{worker_metrics}/metrics", timeout=10).text
        assert up(f"http://127.0.0.1:{webhook_metrics}/metrics")
    finally:
        for process in (api, worker, webhooks):
            process.stop()
        drop_database(db_name)
    result.logs = {"api": api.log(), "worker": worker.log(), "webhooks": webhooks.log()}
    yield result


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(found: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in found.items() if n == name and set(labels.items()) <= set(lbls))


def parse_every_line(text: str, source: str) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"{source} line {number} is not JSON: {line!r}")
    return records


def test_the_job_completes_and_migrate_reports(stack: Stack) -> None:
    assert stack.job["status"] == "completed", stack.job
    assert f"empty -> {head_revision()}" in stack.migrate_output and "applied 0001 " in stack.migrate_output


def test_every_log_line_is_json_and_carries_the_job_id(stack: Stack) -> None:
    job_id = stack.job["id"]
    records = {name: parse_every_line(text, name) for name, text in stack.logs.items()}
    for record in [r for rs in records.values() for r in rs]:
        assert {"ts", "level", "logger", "message", "job_id"} <= record.keys(), record
    access = [r for r in records["api"] if r["logger"] == "uvicorn.access"]
    about_job = [r for r in access if r["path"].startswith(f"/v1/videos/{job_id}")]
    assert about_job and all(r["job_id"] == job_id for r in about_job)
    assert any(r["status"] == 404 for r in access)  # status and route are fields, not only text
    worker = records["worker"]
    assert any(r["job_id"] == job_id for r in worker if r["logger"].startswith("worker"))
    assert any("ready" in r["message"] for r in worker)  # Celery's own lines are JSON too
    assert any(r["logger"] == "celery.app.trace" and r["job_id"] == job_id for r in worker)
    assert any("Warm shutdown" in r["message"] for r in worker)  # its signal-handler notice too


def test_api_counters_are_summed_over_its_processes_and_never_go_down(stack: Stack) -> None:
    scrapes = [samples(text) for text in stack.api_scrapes]
    for earlier, later in itertools.pairwise(scrapes):
        for key, before in earlier.items():
            if key[0].endswith(("_total", "_count", "_sum", "_bucket")):
                assert later.get(key, -1) >= before, f"{key} went down"
    healthz = [total(s, "vidq_http_requests_total", route="/healthz") for s in scrapes]
    assert healthz == stack.healthz_calls  # every request counted, whichever process took it
    assert total(scrapes[-1], "vidq_jobs_submitted_total", model="tiny-wan") == 1


def test_the_worker_counts_its_render_steps_and_stages(stack: Stack) -> None:
    found = samples(stack.worker_metrics)
    assert total(found, "vidq_jobs_finished_total", model="tiny-wan", outcome="completed") == 1
    assert total(found, "vidq_denoising_step_seconds_count", model="tiny-wan") == 3  # one per step
    assert total(found, "vidq_queue_wait_seconds_count", model="tiny-wan") == 1
    for stage in stack.job["stage_timings"]:
        assert total(found, "vidq_stage_seconds_count", model="tiny-wan", stage=stage) == 1, stage
    assert total(found, "vidq_stage_seconds_sum", stage="denoising") == pytest.approx(
        stack.job["stage_timings"]["denoising"]
    )
