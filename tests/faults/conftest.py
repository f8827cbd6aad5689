"""The fault suite's stack: its own PostgreSQL, Redis and S3 (see services.py), the real API served
by uvicorn on loopback, and real `vidq worker` processes. Intervals are short so that every repair
(sweep, redispatch, lost-worker detection, retries) happens within seconds, and jobs are tiny
(64x64, 5 frames, 1-2 steps) so the whole suite stays within a few minutes on 2 cores."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from minio import Minio
from minio.versioningconfig import ENABLED, VersioningConfig
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from jobs import lifecycle, migrate
from jobs.attempts import AttemptOutcome
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.models import DispatchOutbox, Job, JobAttempt, JobEvent
from jobs.settings import Settings
from tests.faults.services import OwnPostgres, OwnRedis, OwnS3
from tests.service.processes import WorkerProcess
from vidq.embedded import free_port

pytestmark = pytest.mark.faults

BUCKET = "vidq-faults"
TINY_JOB = {"model": "tiny-wan", "size": "64x64", "num_frames": 5, "num_inference_steps": 1}


@dataclass
class Stack:
    postgres: OwnPostgres
    redis: OwnRedis
    s3: OwnS3
    settings: Settings
    database: str
    session_factory: sessionmaker[Session]

    def s3_client(self) -> Minio:
        return Minio(f"127.0.0.1:{self.s3.port}", access_key="testing", secret_key="testing", secure=False)


@pytest.fixture(scope="package")
def stack(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    postgres = OwnPostgres().start()
    own_redis = OwnRedis().start()
    s3 = OwnS3().start()
    try:
        url = postgres.create_database("vidq")
        settings = Settings(
            database_url=url,
            redis_url=own_redis.url,
            s3_endpoint=s3.endpoint,
            s3_access_key="testing",
            secret_key="faults-test-secret",
            s3_secret_key="testing",
            s3_bucket=BUCKET,
            s3_timeout_s=2.0,
            storage_retry_s=1.0,
            models_dir=models_dir,
            data_dir=tmp_path_factory.mktemp("faults-data"),
            device="cpu",
            sweep_interval_s=0.3,
            redispatch_after_s=1.5,
            heartbeat_interval_s=0.3,
            heartbeat_timeout_s=20.0,  # the status record tells sooner; this is the last resort
            progress_write_interval_s=0.2,
            db_retry_s=2.0,
            retry_backoff_s=0.5,
            max_attempts=6,
            checkpoint_every_s=0,
        )
        migrate.upgrade(settings)
        client = Minio(f"127.0.0.1:{s3.port}", access_key="testing", secret_key="testing", secure=False)
        client.make_bucket(BUCKET)
        client.set_bucket_versioning(BUCKET, VersioningConfig(ENABLED))  # every upload is a version: counted
        engine = make_engine(settings)
        yield Stack(postgres, own_redis, s3, settings, "vidq", make_session_factory(engine))
        engine.dispose()
    finally:
        s3.stop()
        own_redis.stop()
        postgres.close()


@pytest.fixture(scope="package")
def api_url(stack: Stack) -> Iterator[str]:
    """The real app (sweeper included) served by uvicorn on loopback."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(stack.settings), host="127.0.0.1", port=port, log_level="warning")
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


@pytest.fixture(autouse=True)
def clean_slate(stack: Stack) -> None:
    """Each case starts from an empty queue: what an earlier case left unfinished is cancelled (its
    messages, if any come back, are dropped at the claim) and the broker is emptied."""
    with session_scope(stack.session_factory) as session:
        unfinished = select(Job).where(Job.status.in_(("queued", "in_progress"))).with_for_update()
        for job in session.scalars(unfinished):
            lifecycle.cancel(session=session, job=job)
    redis.Redis.from_url(stack.redis.url).flushdb()


@pytest.fixture
def client(api_url: str, stack: Stack) -> Iterator[httpx.Client]:
    """One kept-alive HTTP connection with a fresh client key."""
    with session_scope(stack.session_factory) as session:
        key = create_key(session=session, name="faults").plaintext
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
        yield http


@pytest.fixture
def start_worker(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def _start(wait: bool = True, **env: str) -> WorkerProcess:
        log = Path(tmp_path_factory.mktemp("worker")) / "worker.log"
        proc = WorkerProcess(stack.settings, log, **env)
        started.append(proc)
        return proc.wait_ready() if wait else proc

    yield _start
    for proc in started:
        proc.stop()


def submit(client: httpx.Client, count: int, **fields: Any) -> list[str]:
    ids = []
    for index in range(count):
        response = client.post("/v1/videos", json={**TINY_JOB, "prompt": f"fault case {index}", **fields})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def wait_until_published(stack: Stack, ids: list[str], timeout_s: float = 30.0) -> None:
    """Wait for the API's relay thread to publish the jobs' render messages (moments after each
    commit; the request does not wait for it), so a test starts from messages in the broker."""
    deadline = time.monotonic() + timeout_s
    while not all(job.dispatched_at is not None for job in job_rows(stack, ids).values()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the relay did not publish {ids} within {timeout_s}s: {_relay_state(stack, ids)}")
        time.sleep(0.01)


def _relay_state(stack: Stack, ids: list[str]) -> dict[str, object]:
    """What a stalled relay left behind, for the failure message: the jobs' outbox rows (attempts and
    the last broker error) and the events not yet fanned out."""
    with session_scope(stack.session_factory) as session:
        rows = session.scalars(select(DispatchOutbox).where(DispatchOutbox.job_id.in_(ids))).all()
        unrelayed = session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.relayed_at.is_(None)))
        holders = session.execute(  # who holds the fan-out's advisory lock, and in what state
            text(
                "SELECT a.pid, a.state, now() - a.state_change FROM pg_locks l JOIN pg_stat_activity a"
                " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
            )
        ).all()
        return {
            "outbox": [(row.job_id, row.published_at, row.publish_attempts, row.last_error) for row in rows],
            "events_not_fanned_out": unrelayed,
            "fan_out_lock_held_by": [tuple(holder) for holder in holders],
        }


def job_rows(stack: Stack, ids: list[str]) -> dict[str, Job]:
    with session_scope(stack.session_factory) as session:
        return {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}


def wait_until_finished(stack: Stack, ids: list[str], timeout_s: float = 120.0) -> dict[str, Job]:
    """Poll the database until every job is completed, failed or cancelled (outages are waited out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            jobs = job_rows(stack, ids)
        except Exception:  # the test stopped the database; keep polling
            jobs = {}
        if len(jobs) == len(ids) and all(j.status in ("completed", "failed", "cancelled") for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            stalled = {j.id: (j.status, j.attempts, j.error_message) for j in jobs.values() if j.status != "completed"}
            raise AssertionError(f"jobs stalled after {timeout_s}s: {stalled}")
        time.sleep(0.2)


def assert_completed_exactly_once(stack: Stack, ids: list[str], timeout_s: float = 120.0) -> dict[str, Job]:
    """Every job completed, with one completed attempt and one stored upload of its video."""
    jobs = wait_until_finished(stack, ids, timeout_s)
    not_completed = {j.id: (j.status, j.error_code, j.error_message) for j in jobs.values() if j.status != "completed"}
    assert not not_completed, not_completed
    with session_scope(stack.session_factory) as session:
        completed_attempts = session.scalars(
            select(JobAttempt.job_id).where(JobAttempt.job_id.in_(ids), JobAttempt.outcome == AttemptOutcome.COMPLETED)
        ).all()
    assert sorted(completed_attempts) == sorted(ids)
    s3 = stack.s3_client()
    for job in jobs.values():
        versions = [
            o
            for o in s3.list_objects(BUCKET, prefix=job.video_key, include_version=True)
            if not o.is_delete_marker and o.object_name == job.video_key
        ]
        assert len(versions) == 1, f"{job.id}: {len(versions)} uploads of its video"
    return jobs


def wait_for_log(worker: WorkerProcess, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"worker never logged {text!r}:\n{worker.log()[-3000:]}")
        time.sleep(0.1)
