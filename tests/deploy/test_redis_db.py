"""The test run claims its Redis database and never flushes one it does not own. These tests use
an empty spare database and touch only the keys they write there."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import redis

from tests.conftest import REDIS_BASE
from tests.redis_db import OWNER_KEY, RedisDatabaseBusy, claim


@pytest.fixture
def spare_db(redis_db) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """An empty database other than this run's; whatever a test leaves there is removed key by key."""
    for db in range(15, 0, -1):
        if db != redis_db.db and redis.Redis.from_url(f"{REDIS_BASE}/{db}").dbsize() == 0:
            break
    else:
        pytest.skip("no empty spare Redis database")
    client = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
    yield db
    for key in client.scan_iter():
        client.delete(key)


def test_a_database_with_someone_elses_keys_is_refused_and_left_alone(spare_db: int) -> None:
    client = redis.Redis.from_url(f"{REDIS_BASE}/{spare_db}")
    client.set("myapp:session:42", "precious")
    with pytest.raises(RedisDatabaseBusy, match="no vidq test run wrote"):
        claim(REDIS_BASE, spare_db)
    assert client.get("myapp:session:42") == b"precious" and client.get(OWNER_KEY) is None


def test_a_database_held_by_a_live_run_is_refused(spare_db: int) -> None:
    client = redis.Redis.from_url(f"{REDIS_BASE}/{spare_db}")
    client.set(OWNER_KEY, f"{socket.gethostname()}:{os.getppid()}")  # a process that is alive
    client.set("gpu.wan", "its queue")
    with pytest.raises(RedisDatabaseBusy, match="in use by another test run"):
        claim(REDIS_BASE, spare_db)
    assert client.get("gpu.wan") == b"its queue"


def test_an_empty_database_or_vidq_leftovers_are_claimed_flushed_and_released(spare_db: int) -> None:
    client = redis.Redis.from_url(f"{REDIS_BASE}/{spare_db}")
    client.set("_kombu.binding.gpu.wan", "left by an earlier run")
    claimed = claim(REDIS_BASE, spare_db)
    assert client.keys() == [OWNER_KEY.encode()]
    client.set("vidq:jobs:x", "1")
    claimed.flush()
    assert client.keys() == [OWNER_KEY.encode()]  # the marker survives a flush
    claimed.release()
    assert client.dbsize() == 0


def test_a_dead_runs_database_is_taken_over(spare_db: int) -> None:
    client = redis.Redis.from_url(f"{REDIS_BASE}/{spare_db}")
    client.set(OWNER_KEY, f"{socket.gethostname()}:999999999")  # no such process
    claim(REDIS_BASE, spare_db).release()
    assert client.dbsize() == 0
