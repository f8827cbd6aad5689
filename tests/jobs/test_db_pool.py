"""The pool checks a connection before use only after it sat idle (``jobs.db.ping_connections_idle_for``):
a connection the server dropped while idle is replaced unseen; one reused at once is not checked,
and if the server dropped it, the first statement fails as an outage and the pool starts over."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from jobs.db import PING_AFTER_IDLE_S, is_database_outage, make_engine
from jobs.settings import Settings


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(Settings(database_url=database_url))
    yield engine
    engine.dispose()


@pytest.fixture
def pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections the pool checked, in order."""
    seen: list[object] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: object) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT pg_backend_pid()")))


def _terminate(engine: Engine, pid: int) -> None:
    """Drop a backend from another connection (what a restart or an admin's reset does to it)."""
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with engine.connect() as other:
            if not other.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}):
                return
        time.sleep(0.05)
    raise AssertionError(f"backend {pid} was not terminated")


def test_a_connection_reused_at_once_is_not_checked(engine: Engine, pings: list[object]) -> None:
    for _ in range(20):
        _backend_pid(engine)
    assert pings == []  # one connection, back in use within milliseconds every time


def test_a_connection_dropped_while_idle_is_replaced_before_use(engine: Engine, pings: list[object]) -> None:
    dropped = _two_pooled_backends(engine)
    _terminate_from_outside(engine, dropped)
    time.sleep(PING_AFTER_IDLE_S + 0.1)

    assert _backend_pid(engine) not in dropped  # no error: the check found it dead and reconnected
    assert pings, "an idle connection was used without a check"


def test_a_connection_dropped_and_reused_at_once_fails_as_an_outage_then_the_pool_starts_over(
    engine: Engine,
) -> None:
    dropped = _two_pooled_backends(engine)
    _terminate_from_outside(engine, dropped)

    with pytest.raises(sa_exc.DBAPIError) as failed, engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert is_database_outage(failed.value)
    # The failure invalidated the whole pool: the other dropped connection is not handed out either.
    assert _backend_pid(engine) not in dropped
    assert _backend_pid(engine) not in dropped


def _two_pooled_backends(engine: Engine) -> list[int]:
    """Two connections checked out at once and returned: the pool now holds both."""
    with engine.connect() as first, engine.connect() as second:
        return [int(conn.scalar(text("SELECT pg_backend_pid()"))) for conn in (first, second)]


def _terminate_from_outside(engine: Engine, pids: list[int]) -> None:
    """Terminate backends through a connection outside ``engine``'s pool, so the pool keeps them."""
    other = make_engine(Settings(database_url=engine.url.render_as_string(hide_password=False)))
    try:
        for pid in pids:
            _terminate(other, pid)
    finally:
        other.dispose()
