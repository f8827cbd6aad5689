"""Database engine and session factory.

Workers fork and run for days, so engines are created per process (see ``dispose_engine``) and
connections idle in the pool are checked before use: a PostgreSQL restart costs a reconnect, not a
failed job.
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

from sqlalchemy import DateTime, Engine, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from jobs.errors import DependencyUnavailable
from jobs.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
CONNECT_TIMEOUT_S = 3  # PostgreSQL connect timeout: an unreachable database is an error in seconds
PING_AFTER_IDLE_S = 0.5  # a pooled connection unused this long is checked before use
_CHECKED_IN_AT = "vidq.checked_in_at"


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
    engine = create_engine(
        url,
        # Sized to the requests a process runs at once (VIDQ_API_MAX_CONCURRENCY, each holding at most one
        # connection) plus its background threads; opened lazily, so a worker uses only what it needs.
        pool_size=settings.resolved_db_pool_size,
        max_overflow=0,
        pool_timeout=5,
        # Errors and logs never carry the statement's parameters: they hold key hashes and signing secrets.
        hide_parameters=True,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
    )
    ping_connections_idle_for(engine, PING_AFTER_IDLE_S)
    return engine


def ping_connections_idle_for(engine: Engine, idle_s: float) -> None:
    """Check a pooled connection before use if it sat in the pool ``idle_s`` or longer; one that fails
    the check is replaced, not used (a PostgreSQL restart, an idle connection reset).

    SQLAlchemy's ``pool_pre_ping`` checks every checkout: one more round trip, and a statement for the
    database, per request. Under load a connection goes back to work within milliseconds, while the
    database it talked to answered a moment before: that check finds nothing. What a restart breaks is
    seen on the first statement instead, which fails as an outage (503 to a client, a retry for
    ``retry_db``) and makes the pool replace all its older connections at once."""

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_conn, record) -> None:  # type: ignore[no-untyped-def]
        record.info[_CHECKED_IN_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        checked_in = record.info.get(_CHECKED_IN_AT)
        if checked_in is None or time.monotonic() - checked_in < idle_s:
            return  # new (it just connected), or back in use at once
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise sa_exc.DisconnectionError(f"a pooled connection failed its check: {exc}") from exc


# A relay pass's transaction holds what every other relay waits for or skips: the fan-out lock, the
# outbox and webhook-delivery rows it publishes. A process frozen in the middle of one (SIGSTOP, a VM
# stall, a debugger) would stall dispatch for the whole service until its session ended, which for a
# stopped process is never: PostgreSQL ends such a session once it has sat idle in its transaction
# this long, and the pass is redone by whichever relay comes next. Longer than a broker publish can
# take (2-s connect and 5-s socket timeouts, kombu's retries for webhook messages), which a pass
# makes inside its transaction.
RELAY_IDLE_TIMEOUT_S = 15.0
# The bound as a select-list item (``:idle``: ``relay_idle_bound()``), to ride in a transaction's first statement.
IDLE_BOUND_SQL = "set_config('idle_in_transaction_session_timeout', :idle, true)"
_IDLE_BOUND = text(f"SELECT {IDLE_BOUND_SQL}")


def idle_setting(seconds: float) -> str:
    """``seconds`` as a PostgreSQL duration setting (``idle_in_transaction_session_timeout``, ``lock_timeout``)."""
    return f"{int(seconds * 1000)}ms"


def relay_idle_bound() -> str:
    """``RELAY_IDLE_TIMEOUT_S`` as the ``:idle`` of ``IDLE_BOUND_SQL`` (read at each call)."""
    return idle_setting(RELAY_IDLE_TIMEOUT_S)


def bound_idle_transaction(session: Session) -> None:
    """PostgreSQL ends ``session``'s connection should it sit idle in its current transaction for
    ``RELAY_IDLE_TIMEOUT_S`` (this transaction only: ``set_config``'s ``is_local``). Nothing on SQLite."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_IDLE_BOUND, {"idle": relay_idle_bound()})


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
