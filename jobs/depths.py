"""How many jobs each queue holds, kept as counters (``queue_depths``) so a NEW job's queue position
is one small read instead of a count of the whole backlog.

``jobs.lifecycle`` records +1 when a job enters ``queued`` (created, requeued) and -1 when it leaves
it (started, cancelled, failed) or a queued job is deleted (:func:`record`). A transaction's changes
are summed per queue and written just before it commits, in the same transaction, one row per queue
in queue order (so two transactions that change several queues cannot deadlock on the counters),
each to a random one of the queue's ``SHARDS`` rows (so concurrent submits rarely wait on one row
lock, and only for their commit). A rolled-back transaction changes nothing.

A new job's position (``COMMITTED_DEPTH``, read by its own INSERT, then :func:`with_pending`) is
the queue's committed depth plus its own transaction's changes: the jobs queued when it was
accepted, itself included. Submits committing at the same moment do not see each other; reads later
(``jobs.public.queue_position``) count the jobs ahead of
it exactly. :func:`recount` (the sweeper, every ``RECOUNT_INTERVAL_S``) rewrites the counters from
an exact count, so a crash between two writers or a hand-edited row cannot leave them wrong for long.
"""

from __future__ import annotations

import random
from collections import defaultdict
from types import ModuleType
from typing import Any

from sqlalchemy import bindparam, delete, event, func, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, SessionTransaction

from jobs.db import idle_setting
from jobs.models import Job, QueueDepth
from jobs.states import JobStatus

SHARDS = 8
RECOUNT_INTERVAL_S = 60.0  # how often the sweeper rewrites the counters from an exact count
# The recount's table lock stops every submit while it is held or queued for, so it is bounded on
# PostgreSQL: it waits at most RECOUNT_LOCK_WAIT_S for the lock (then the next interval tries again),
# and a recount whose process stops mid-transaction (frozen, paused, a VM stall) loses its session,
# and with it the lock, after RECOUNT_IDLE_TIMEOUT_S instead of blocking the submits until it wakes.
RECOUNT_LOCK_WAIT_S = 2.0
RECOUNT_IDLE_TIMEOUT_S = 5.0

_PENDING = "vidq.queue_depth_changes"


def record(session: Session, queue: str, change: int) -> None:
    """Count ``change`` (+1 or -1) queued jobs of ``queue``, written when ``session`` commits."""
    changes: defaultdict[str, int] = session.info.setdefault(_PENDING, defaultdict(int))
    changes[queue] += change


_TABLE = QueueDepth.__table__


def _add_statement(dialect: ModuleType) -> Any:
    statement = dialect.insert(_TABLE).values(queue=bindparam("queue"), shard=bindparam("shard"), queued=bindparam("n"))
    return statement.on_conflict_do_update(
        index_elements=[_TABLE.c.queue, _TABLE.c.shard], set_={"queued": _TABLE.c.queued + statement.excluded.queued}
    )


# Core statements on the session's connection: built once, compiled once (no ORM bulk-statement work per submit).
_ADD = {"postgresql": _add_statement(postgresql), "sqlite": _add_statement(sqlite)}


# The committed depth of the queue bound as ``depth_of_queue``, as an expression another statement
# can return: a new job's INSERT reads its queue's depth with it, no round trip of its own.
COMMITTED_DEPTH = (
    select(func.coalesce(func.sum(_TABLE.c.queued), 0))
    .where(_TABLE.c.queue == bindparam("depth_of_queue"))
    .scalar_subquery()
    .label("depth_of_queue")
)


def with_pending(session: Session, queue: str, committed: int | None) -> int:
    """The queue's queued jobs: ``committed`` (its committed depth, read by ``COMMITTED_DEPTH``) plus
    this transaction's own changes."""
    return int(committed or 0) + session.info.get(_PENDING, {}).get(queue, 0)


@event.listens_for(Session, "before_commit")
def _write_changes(session: Session) -> None:
    changes: dict[str, int] | None = session.info.pop(_PENDING, None)
    if not changes:
        return
    connection = session.connection()
    add = _ADD[connection.dialect.name]
    for queue in sorted(changes):  # one lock order for every transaction
        if changes[queue]:
            connection.execute(add, {"queue": queue, "shard": random.randrange(SHARDS), "n": changes[queue]})


@event.listens_for(Session, "after_transaction_end")
def _forget_changes(session: Session, transaction: SessionTransaction) -> None:
    # Rolled back or closed without a commit (a commit took them already): they never happened.
    if transaction.parent is None:
        session.info.pop(_PENDING, None)


def _carried_statement() -> Any:
    statement = postgresql.insert(_TABLE).values(
        queue=bindparam("carried_queue"), shard=bindparam("carried_shard"), queued=bindparam("carried_n")
    )
    upsert = statement.on_conflict_do_update(
        index_elements=[_TABLE.c.queue, _TABLE.c.shard], set_={"queued": _TABLE.c.queued + statement.excluded.queued}
    )
    return upsert.cte("queue_depth_change")


_CARRIED = _carried_statement()


def carry(session: Session) -> tuple[Any, dict[str, Any]] | None:
    """The transaction's counter change as a CTE and its parameters, for the transaction's last
    statement to carry (``jobs.inserts.insert_row(carrying=...)``): it is then not written at the
    commit, one statement less. A new job's transaction has one change (+1 to its queue), and its
    event is the last INSERT before the commit, so the shard's row lock is held for as short a time
    as before.

    None (the change stays for the commit) on SQLite, which has no data-modifying CTEs, and when
    the transaction changed more than one queue: those are written in queue order at the commit, so
    that two transactions cannot take their locks in opposite orders."""
    changes: dict[str, int] | None = session.info.get(_PENDING)
    if not changes or len(changes) != 1 or session.get_bind().dialect.name != "postgresql":
        return None
    [(queue, change)] = changes.items()
    if not change:
        return None
    session.info.pop(_PENDING)
    return _CARRIED, {"carried_queue": queue, "carried_shard": random.randrange(SHARDS), "carried_n": change}


def recount(session: Session) -> dict[str, int]:
    """Rewrite every queue's counters from an exact count (one row per queue; queues with no queued
    job lose theirs). On PostgreSQL the table is locked against writers first: transactions with
    counter changes in flight finish before the count, later ones wait for this commit, so no change
    is lost or counted twice. Returns {queue: depth}. The caller commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(  # both for this transaction only (set_config's third argument: is_local)
            text(
                "SELECT set_config('lock_timeout', :wait, true),"
                " set_config('idle_in_transaction_session_timeout', :idle, true)"
            ),
            {"wait": idle_setting(RECOUNT_LOCK_WAIT_S), "idle": idle_setting(RECOUNT_IDLE_TIMEOUT_S)},
        )
        session.execute(text("LOCK TABLE queue_depths IN SHARE ROW EXCLUSIVE MODE"))
    session.execute(delete(QueueDepth))  # on SQLite this takes the database's write lock first
    exact = {
        queue: int(n)
        for queue, n in session.execute(
            select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED.value).group_by(Job.queue)
        )
    }
    if exact:
        session.execute(insert(QueueDepth), [{"queue": q, "shard": 0, "queued": n} for q, n in exact.items()])
    return exact
