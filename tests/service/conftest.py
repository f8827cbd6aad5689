from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings
from tests.service.processes import WorkerProcess
from vidq.embedded import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(service_settings: Settings) -> Iterator[TestClient]:
    """The real app (lifespan, sweeper and all) against the real services."""
    with TestClient(create_app(service_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def live_api(service_settings: Settings) -> Iterator[str]:
    """The real app served by uvicorn on loopback, for clients that need real HTTP (streams); yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(service_settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def make_key(service_settings: Settings) -> Callable[..., str]:
    factory = make_session_factory(make_engine(service_settings))

    def _make(name: str = "client", admin: bool = False) -> str:
        with session_scope(factory) as session:
            return create_key(session=session, name=name, is_admin=admin).plaintext

    return _make


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def wait_for_job(
    api: httpx.Client, key: str, job_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 120.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = api.get(f"/v1/videos/{job_id}", headers=auth(key)).json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job never reached the expected state; last seen: {job}")
        time.sleep(0.05)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def no_backlog(service_settings: Settings) -> None:
    """Cancel the jobs earlier modules left queued (test_api submits many with no worker running), so
    this module's worker does not render them first. Their messages are then dropped on arrival."""
    from sqlalchemy import select

    from jobs.lifecycle import cancel
    from jobs.models import Job

    engine = make_engine(service_settings)
    with session_scope(make_session_factory(engine)) as session:
        for job in session.scalars(select(Job).where(Job.status == "queued").with_for_update()):
            cancel(session=session, job=job)
    engine.dispose()


@pytest.fixture(scope="module")
def start_worker(
    service_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(*args: str, **env: str) -> WorkerProcess:
        log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
        proc = WorkerProcess(service_settings, log, *args, **env)
        started.append(proc)
        return proc.wait_ready()

    yield _start
    for proc in started:
        proc.stop()
