"""`jobs.inserts.insert_row`: one Core INSERT that leaves the row exactly as the ORM's flush would."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from sqlalchemy import bindparam, event, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import make_engine, make_session_factory, session_scope, utcnow
from jobs.ids import new_job_id
from jobs.inserts import insert_row
from jobs.migrate import upgrade
from jobs.models import ApiKey, Job, JobEvent
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.validation import JobRequest, resolve_job_params


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def factory(
    request: pytest.FixtureRequest, session_factory: sessionmaker[Session], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sessionmaker[Session]]:
    """The module's PostgreSQL session factory, or one on a migrated SQLite file (embedded mode)."""
    if request.param == "postgresql":
        yield session_factory
        return
    folder: Path = tmp_path_factory.mktemp("sqlite")
    settings = Settings(database_url=f"sqlite:///{folder / 'vidq.db'}", data_dir=folder)
    upgrade(settings)
    engine = make_engine(settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def key(factory: sessionmaker[Session]) -> ApiKey:
    from jobs.keys import create_key

    with session_scope(factory) as session:
        return create_key(session=session, name="inserts").record


def built_job(owner: ApiKey, **extra: object) -> Job:
    """A finished job on a queue of its own: the session's database is shared with other tests, whose
    queue counters and queued jobs these rows (written without ``jobs.lifecycle``) must not touch."""
    params = asdict(resolve_job_params(JobRequest(prompt="a fox", model="tiny-wan")))
    fields = {**params, "queue": "test-inserts", "status": JobStatus.CANCELLED.value, **extra}
    return Job(id=new_job_id(), owner_id=owner.id, **fields)


def row_values(session: Session, job_id: str) -> dict[str, object]:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return {column.key: getattr(job, column.key) for column in Job.__table__.columns if column.key != "id"}


def test_an_inserted_job_is_the_row_a_flush_writes(factory: sessionmaker[Session], key: ApiKey) -> None:
    now = utcnow()
    by_flush = built_job(key, created_at=now, seed=7)
    by_insert = built_job(key, created_at=now, seed=7, negative_prompt=None)
    with session_scope(factory) as session:
        session.add(by_flush)
        session.flush()
        insert_row(session, by_insert)
        # Attached as loaded: nothing pending, every value known without a query.
        state = inspect(by_insert)
        assert state.persistent and not state.modified and not state.expired_attributes
        in_memory = {column.key: getattr(by_insert, column.key) for column in Job.__table__.columns}
    with session_scope(factory) as session:
        flushed, inserted = row_values(session, by_flush.id), row_values(session, by_insert.id)
    assert inserted == flushed  # defaults included: a None with a Python default took the default
    assert inserted["negative_prompt"] == "" and inserted["num_gpus"] == 1 and inserted["last_event_seq"] == 0
    assert {k: v for k, v in in_memory.items() if k != "id"} == inserted


def test_later_changes_to_an_inserted_row_are_updates(factory: sessionmaker[Session], key: ApiKey) -> None:
    job = built_job(key)
    statements: list[str] = []
    with session_scope(factory) as session:
        insert_row(session, job)
        engine = session.get_bind()
        listener = lambda *args: statements.append(args[2].split()[0].upper())  # noqa: E731
        event.listen(engine, "before_cursor_execute", listener)
        try:
            job.progress = 40
            session.flush()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
    assert statements == ["UPDATE"]
    with session_scope(factory) as session:
        assert session.get(Job, job.id).progress == 40  # type: ignore[union-attr]


def test_a_generated_key_comes_back(factory: sessionmaker[Session], key: ApiKey) -> None:
    job = built_job(key, last_event_seq=2)
    with session_scope(factory) as session:
        insert_row(session, job)
        done = utcnow()  # relayed already: the relay of other tests sharing the database must skip them
        first = JobEvent(job_id=job.id, seq=1, type="video.queued", data={"n": 1}, relayed_at=done)
        second = JobEvent(job_id=job.id, seq=2, type="video.queued", data={"n": 2}, relayed_at=done)
        insert_row(session, first)
        insert_row(session, second)
        assert first.id is not None and second.id > first.id
        assert first.created_at is not None and first.relayed_at == done
    with session_scope(factory) as session:
        rows = session.execute(select(JobEvent.id, JobEvent.data).where(JobEvent.job_id == job.id)).all()
    assert sorted(rows) == [(first.id, {"n": 1}), (second.id, {"n": 2})]


def test_the_insert_also_returns_an_expression_read_in_the_same_statement(
    factory: sessionmaker[Session], key: ApiKey
) -> None:
    """``also_return``: what the database computes for it, for a table without and with a generated key.
    It reads other tables (as the queue depth does): SQLite's RETURNING sees the row just inserted,
    PostgreSQL's subquery does not."""
    earlier = [built_job(key, queue="test-inserts-also") for _ in range(3)]
    done = utcnow()  # relayed already: the relay of other tests sharing the database must skip them
    with session_scope(factory) as session:
        for job in earlier:
            insert_row(session, job)
        for seq in (1, 2):
            insert_row(session, JobEvent(job_id=earlier[0].id, seq=seq, type="video.queued", data={}, relayed_at=done))
    events_of = select(func.count()).select_from(JobEvent).where(JobEvent.job_id == bindparam("also_job"))
    jobs_on = select(func.count()).select_from(Job).where(Job.queue == bindparam("also_queue"))
    job = built_job(key, queue="test-inserts-also")
    with session_scope(factory) as session:
        returned = insert_row(session, job, also_return=events_of.scalar_subquery(), params={"also_job": earlier[0].id})
        assert returned == 2
        event_row = JobEvent(job_id=job.id, seq=1, type="video.queued", data={}, relayed_at=done)
        returned = insert_row(
            session, event_row, also_return=jobs_on.scalar_subquery(), params={"also_queue": "test-inserts-also"}
        )
        assert returned == 4  # the three earlier jobs and this transaction's
        assert event_row.id is not None  # the generated key still comes back
        plain = JobEvent(job_id=job.id, seq=2, type="video.queued", data={}, relayed_at=done)
        assert insert_row(session, plain) is None
    with session_scope(factory) as session:
        assert session.get(Job, job.id) is not None


def test_a_duplicate_key_raises_before_the_instance_is_attached(factory: sessionmaker[Session], key: ApiKey) -> None:
    job = built_job(key)
    with session_scope(factory) as session:
        insert_row(session, job)
    again = built_job(key)
    again.id = job.id
    session = factory()
    try:
        with pytest.raises(IntegrityError):
            insert_row(session, again)
        assert inspect(again).transient  # not in the session: a rollback has nothing of it to undo
        session.rollback()
    finally:
        session.close()


def test_an_instance_already_in_a_session_is_refused(factory: sessionmaker[Session], key: ApiKey) -> None:
    job = built_job(key)
    with factory() as session:
        session.add(job)
        with pytest.raises(ValueError, match="not in a session"):
            insert_row(session, job)
