"""The relay: each committed state change fanned out exactly once, even when the relay is killed.

A state change commits its `JobEvent`; what follows it (render message, webhook deliveries, live
message) is the relay's. These tests SIGKILL a real relay process in the middle of its fan-out and
right after its commit, then check, by event id, that nothing was lost or written twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from jobs import migrate
from jobs.crud import create_job
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.events import ProgressEvent, StatusEvent
from jobs.execution import claim_job
from jobs.keys import create_key
from jobs.models import DispatchOutbox, JobEvent, WebhookDelivery
from jobs.relay import fan_out
from jobs.settings import Settings
from jobs.validation import JobRequest
from jobs.webhooks.endpoints import create_endpoint

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = frozenset({"127.0.0.1:*"})
HOOK = "http://127.0.0.1:9/hook"  # never called here: only the rows matter

# A relay process that dies by SIGKILL: "mid-fan-out" after writing the deliveries of two events
# (nothing committed yet), "after-commit" when it goes to publish the first live message.
KILLED_RELAY = """
import os, signal, sys
from jobs import relay
from jobs.db import make_engine, make_session_factory
from jobs.events import NullEventBus
from jobs.settings import Settings

def die():
    os.kill(os.getpid(), signal.SIGKILL)

bus = NullEventBus()
if sys.argv[1] == "mid-fan-out":
    written = []
    add_deliveries = relay.add_deliveries
    def add_then_die(**kwargs):
        rows = add_deliveries(**kwargs)
        written.append(rows)
        if len(written) == 2:
            die()
        return rows
    relay.add_deliveries = add_then_die
else:
    class DyingBus:
        def publish(self, job_id, event):
            die()
    bus = DyingBus()
relay.fan_out(session_factory=make_session_factory(make_engine(Settings())), bus=bus)
"""


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[StatusEvent | ProgressEvent] = []

    def publish(self, job_id: str, event: StatusEvent | ProgressEvent) -> None:
        self.published.append(event)


@pytest.fixture
def fresh_factory(empty_database: str) -> Iterator[sessionmaker[Session]]:
    """A database of its own: the relay fans out every unrelayed event, not only this test's."""
    migrate.upgrade(Settings(database_url=empty_database))
    engine = make_engine(Settings(database_url=empty_database))
    yield make_session_factory(engine)
    engine.dispose()


def kill_a_relay(database_url: str, when: str) -> None:
    env = {**os.environ, "VIDQ_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", KILLED_RELAY, when], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()


def counts(factory: sessionmaker[Session]) -> tuple[int, Counter[int], int]:
    """(relayed events, deliveries per event id, outbox rows)."""
    with session_scope(factory) as session:
        relayed = session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.relayed_at.is_not(None)))
        per_event = Counter(session.scalars(select(WebhookDelivery.event_id)))
        outbox = session.scalar(select(func.count()).select_from(DispatchOutbox))
        return int(relayed or 0), per_event, int(outbox or 0)


def test_a_relay_killed_mid_fan_out_or_after_its_commit_loses_and_repeats_nothing(
    fresh_factory: sessionmaker[Session], empty_database: str
) -> None:
    with session_scope(fresh_factory) as session:
        owner = create_key(session=session, name="client").record
        create_endpoint(
            session=session, owner=owner, url=HOOK + "/all", events=None, description="", allowed_hosts=LOOPBACK
        )
    job_ids = []
    for _ in range(3):  # committed, and no relay runs in this process: killed before its fan-out
        with session_scope(fresh_factory) as session:
            job, _ = create_job(
                session=session,
                owner=owner,
                request=JobRequest(prompt="a heron", model="tiny-wan", webhook_url=HOOK),
                webhook_allowed_hosts=LOOPBACK,
            )
            job_ids.append(job.id)
    with session_scope(fresh_factory) as session:
        claim_job(session=session, job_id=job_ids[0], worker_id="w")  # a 4th event: video.started
    with session_scope(fresh_factory) as session:
        event_ids = list(session.scalars(select(JobEvent.id).order_by(JobEvent.id)))
    assert len(event_ids) == 4

    kill_a_relay(empty_database, "mid-fan-out")
    assert counts(fresh_factory) == (0, Counter(), 0)  # its transaction died with it

    kill_a_relay(empty_database, "after-commit")
    relayed, per_event, outbox = counts(fresh_factory)
    assert relayed == 4
    assert per_event == {event_id: 2 for event_id in event_ids}  # the job's URL and the endpoint, once each
    assert outbox == 2  # the two jobs still waiting (the claimed one needs no render message)

    bus = RecordingBus()
    assert fan_out(session_factory=fresh_factory, bus=bus) == 0  # nothing is left, and nothing is redone
    assert counts(fresh_factory) == (relayed, per_event, outbox) and bus.published == []


def test_live_messages_follow_the_commit_in_event_order(fresh_factory: sessionmaker[Session]) -> None:
    with session_scope(fresh_factory) as session:
        owner = create_key(session=session, name="client").record
    with session_scope(fresh_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a heron", model="tiny-wan"))
    with session_scope(fresh_factory) as session:
        claim_job(session=session, job_id=job.id, worker_id="w")
    bus = RecordingBus()
    assert fan_out(session_factory=fresh_factory, bus=bus, batch=1) == 1
    assert fan_out(session_factory=fresh_factory, bus=bus) == 1
    assert [(e.seq, e.job.status) for e in bus.published if isinstance(e, StatusEvent)] == [
        (1, "queued"),
        (2, "in_progress"),
    ]


def _statements_of_a_pass(factory: sessionmaker[Session], jobs: int, owner_id: int) -> tuple[int, list[str]]:
    """Submit ``jobs`` jobs (a webhook URL and LoRA adapters each: every column the relay reads is
    set), then count the statements of one relay pass over them: fan-out, then outbox."""
    import time as _time

    from sqlalchemy import event, update

    from jobs.affinity import affinity_router, worker_queue
    from jobs.models import ApiKey, Job
    from jobs.relay import relay_outbox
    from jobs.workers import WorkerStatus

    with session_scope(factory) as session:
        owner = session.get(ApiKey, owner_id)
        assert owner is not None
        ids = [
            create_job(
                session=session,
                owner=owner,
                request=JobRequest(prompt="a heron", model="tiny-wan", webhook_url=HOOK),
                webhook_allowed_hosts=LOOPBACK,
            )[0].id
            for _ in range(jobs)
        ]
        session.execute(update(Job).where(Job.id.in_(ids)).values(loras=[{"id": "lora_a", "name": "a", "scale": 1.0}]))
    now = _time.time()
    warm = WorkerStatus(
        worker_id="w1", host="h", pid=1, heartbeat_at=now, started_at=now,
        queues=["gpu.wan", worker_queue("w1")], warm_loras=["lora_a"],
    )  # fmt: skip
    route = affinity_router(lambda: [warm], heartbeat_timeout_s=60)
    sent: list[tuple[str, str]] = []

    class Publisher:
        def publish(self, job_id: str, queue: str) -> None:
            sent.append((job_id, queue))

    statements: list[str] = []
    engine = factory.kw["bind"]

    def seen(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0])

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert fan_out(session_factory=factory, bus=RecordingBus()) == jobs
        assert relay_outbox(session_factory=factory, publisher=Publisher(), route=route) == jobs
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert sorted(sent) == sorted((job_id, worker_queue("w1")) for job_id in ids)  # routed by their adapters
    return len(statements), statements


def test_a_relay_pass_costs_the_same_statements_for_one_job_or_many(fresh_factory: sessionmaker[Session]) -> None:
    """The relay reads only some of a job's columns: reading another one on the way would cost a
    query per job (a lazy load), which this catches."""
    with session_scope(fresh_factory) as session:
        owner = create_key(session=session, name="client").record
        owner_id = owner.id
    one, _ = _statements_of_a_pass(fresh_factory, 1, owner_id)
    many, statements = _statements_of_a_pass(fresh_factory, 6, owner_id)
    assert many == one, statements


# A relay process frozen (SIGSTOP, as a VM stall or a debugger would) in the middle of its pass: in the
# fan-out, holding the fan-out lock; or in the outbox relay, holding its rows while it publishes.
FROZEN_RELAY = """
import os, signal, sys
from jobs import db, relay
from jobs.db import make_engine, make_session_factory
from jobs.events import NullEventBus
from jobs.settings import Settings

db.RELAY_IDLE_TIMEOUT_S = float(sys.argv[2])

def freeze():
    print("frozen", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)

factory = make_session_factory(make_engine(Settings()))
if sys.argv[1] == "fan-out":
    endpoints_of = relay.endpoints_of
    def read_then_freeze(session, owners):
        freeze()
        return endpoints_of(session, owners)
    relay.endpoints_of = read_then_freeze
    relay.fan_out(session_factory=factory, bus=NullEventBus())
else:
    class FreezingPublisher:
        def publish_many(self, messages):
            freeze()
    relay.relay_outbox(session_factory=factory, publisher=FreezingPublisher())
"""


class BatchRecorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def publish(self, job_id: str, queue: str) -> None:
        self.sent.append((job_id, queue))

    def publish_many(self, messages: list[tuple[str, str]]) -> None:
        self.sent.extend(messages)


@pytest.mark.parametrize("where", ["fan-out", "outbox"])
def test_a_relay_frozen_mid_pass_holds_the_others_up_only_until_its_session_is_ended(
    fresh_factory: sessionmaker[Session], empty_database: str, where: str
) -> None:
    """PostgreSQL ends the frozen relay's session after ``RELAY_IDLE_TIMEOUT_S`` idle in its
    transaction (1 s here): its lock and rows are released and another relay does the work. Without
    the bound the frozen process holds them for as long as it is stopped (here: the whole test)."""
    from jobs.relay import relay_outbox

    with session_scope(fresh_factory) as session:
        owner = create_key(session=session, name="client").record
    job_ids = [new_job(fresh_factory, owner) for _ in range(3)]
    if where == "outbox":  # the events fanned out: the outbox rows wait to be published
        assert fan_out(session_factory=fresh_factory, bus=RecordingBus()) == 3
    env = {**os.environ, "VIDQ_DATABASE_URL": empty_database, "PYTHONPATH": str(ROOT)}
    frozen = subprocess.Popen(
        [sys.executable, "-c", FROZEN_RELAY, where, "1.0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert frozen.stdout is not None and frozen.stdout.readline() == b"frozen\n", frozen.stderr.read()  # type: ignore[union-attr]
        publisher = BatchRecorder()

        def another_pass() -> int | None:
            if where == "fan-out":
                return fan_out(session_factory=fresh_factory, bus=RecordingBus(), wait=False)
            return relay_outbox(session_factory=fresh_factory, publisher=publisher)

        held_up = another_pass()
        assert held_up in (None, 0)  # the lock is taken, or the rows are: nothing for this pass
        deadline = time.monotonic() + 20
        done = another_pass()
        while done in (None, 0) and time.monotonic() < deadline:
            time.sleep(0.2)
            done = another_pass()
        assert done == 3, f"the frozen relay still holds the {where} after 20 s"
        if where == "outbox":
            assert sorted(job_id for job_id, _ in publisher.sent) == sorted(job_ids)
        with session_scope(fresh_factory) as session:  # the frozen relay's session is gone
            assert not session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                    " AND datname = current_database() AND state LIKE 'idle in transaction%'"
                )
            )
    finally:
        frozen.kill()
        frozen.wait(timeout=10)


def new_job(factory: sessionmaker[Session], owner: object) -> str:
    with session_scope(factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a heron", model="tiny-wan"))  # type: ignore[arg-type]
        return job.id
