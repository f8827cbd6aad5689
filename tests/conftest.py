"""Shared fixtures: a fresh PostgreSQL database, a Redis database, moto's S3 server on loopback, and
the built-in tiny model written once. Nothing here is a stand-in: these are the real services."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from moto.server import ThreadedMotoServer

from jobs import migrate
from jobs.settings import Settings
from tests.receiver import Receiver
from tests.redis_db import ClaimedDatabase, RedisDatabaseBusy, claim_any
from vidq.embedded import free_port

PG_ADMIN_URL = os.environ.get("VIDQ_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("VIDQ_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ["VIDQ_TEST_REDIS_DB"]) if os.environ.get("VIDQ_TEST_REDIS_DB") else None


def create_database() -> str:
    name = f"vidq_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sqlalchemy_url(db_name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{db_name}"


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new, empty PostgreSQL database; yields its SQLAlchemy URL."""
    name = create_database()
    try:
        yield sqlalchemy_url(name)
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL database for the session, migrated with `alembic upgrade head`."""
    name = create_database()
    url = sqlalchemy_url(name)
    migrate.upgrade(Settings(database_url=url))
    try:
        yield url
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on loopback: real HTTP, real signatures."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_db() -> Iterator[ClaimedDatabase]:
    """A Redis database this run claimed for itself (``tests.redis_db``): the only kind it flushes."""
    try:
        claimed = claim_any(REDIS_BASE, REDIS_DB)
    except RedisDatabaseBusy as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield claimed
    finally:
        claimed.release()


@pytest.fixture(scope="session")
def redis_url(redis_db: ClaimedDatabase) -> str:
    return redis_db.url


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, written once so that worker processes do not race to create it."""
    from engine.models.tiny import write_tiny_wan

    root = tmp_path_factory.mktemp("models")
    write_tiny_wan(root / "tiny-wan")
    return root


@pytest.fixture(scope="session")
def service_settings(
    database_url: str, redis_url: str, s3_endpoint: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings for the full stack, with short liveness timeouts so failure tests run in seconds."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        s3_endpoint=s3_endpoint,
        s3_access_key="testing",
        secret_key="service-test-secret",
        s3_secret_key="testing",
        s3_bucket="vidq-test",
        models_dir=models_dir,
        data_dir=tmp_path_factory.mktemp("data"),
        sweep_interval_s=0.5,
        redispatch_after_s=2.0,
        heartbeat_interval_s=0.5,
        heartbeat_timeout_s=4.0,
        progress_write_interval_s=0.0,
        device="cpu",
        webhook_allowed_hosts="127.0.0.1:*",  # the loopback receiver (any port); other private hosts stay refused
        worker_webhooks=True,  # one worker process renders and delivers in these tests
        webhook_retry_schedule_s=[0.3, 0.3, 0.3],
        sse_heartbeat_s=1.0,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on loopback (answers 200 unless scripted otherwise)."""
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()
