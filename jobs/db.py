"""Database engine and session factory.

Workers fork and run for days, so engines are created per process (see ``dispose_engine``) and
connections are checked before use: a PostgreSQL restart costs one reconnect, not a failed job.
Connecting is bounded (``connect_timeout``), so a database that does not answer is reported within
seconds instead of hanging a request, and :func:`retry_db` lets a short outage pass unnoticed by
the work in progress.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import DateTime, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from jobs.errors import DependencyUnavailable
from jobs.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
CONNECT_TIMEOUT_S = 3  # PostgreSQL connect timeout: an unreachable database is an error in seconds


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(settings: Settings) -> Engine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(
        url,
        pool_pre_ping=True,  # a connection the database dropped (restart, reset) is replaced, not used
        # Sized to the requests a process runs at once (VIDQ_API_MAX_CONCURRENCY, each holding at most one
        # connection) plus its background threads; opened lazily, so a worker uses only what it needs.
        pool_size=settings.resolved_db_pool_size,
        max_overflow=0,
        pool_timeout=5,
        # Errors and logs never carry the statement's parameters: they hold key hashes and signing secrets.
        hide_parameters=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_database_outage(exc: BaseException) -> bool:
    """True for errors that say the database could not be reached or dropped the connection (as
    opposed to a query it refused): connection refused or reset, a pool timeout, an admin shutdown."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return True
        return isinstance(exc, sa_exc.OperationalError)
    return False


def retry_db(
    call: Callable[[], T],
    *,
    deadline_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run ``call`` (which opens its own session) until it succeeds, retrying database outages with
    back-off for up to ``deadline_s`` seconds; then raise :class:`DependencyUnavailable`. Any other
    error propagates at once. ``call`` must be safe to repeat (its transaction rolled back)."""
    deadline = clock() + deadline_s
    delay = 0.1
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_database_outage(exc):
                raise
            if clock() + delay > deadline:
                raise DependencyUnavailable("database", f"{what}: the database kept failing: {exc}") from exc
            log.warning("%s: database unavailable (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            sleep(delay)
            delay = min(delay * 2, 2.0)
