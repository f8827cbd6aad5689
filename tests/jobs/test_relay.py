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
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
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
