"""Queue depth counters (`jobs.depths`): kept exact by `jobs.lifecycle`, a new job's position read
from them, repaired by the sweeper's recount, safe under concurrent submits."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.crud import cancel_job, create_job, delete_job, submit_job
from jobs.db import session_scope
from jobs.dispatch import Sweeper, recount_depths
from jobs.execution import claim_job, fail_owned
from jobs.models import ApiKey, Job, QueueDepth
from jobs.public import queue_position
from jobs.settings import Settings
from jobs.states import JobStatus
from jobs.storage.local import LocalStorage
from jobs.validation import JobRequest

REQUEST = JobRequest(prompt="a heron", model="tiny-wan")


def counted(session_factory: sessionmaker[Session]) -> dict[str, int]:
    with session_scope(session_factory) as session:
        rows = session.execute(select(QueueDepth.queue, func.sum(QueueDepth.queued)).group_by(QueueDepth.queue))
        return {queue: int(n) for queue, n in rows if n}


def exact(session_factory: sessionmaker[Session]) -> dict[str, int]:
    with session_scope(session_factory) as session:
        rows = session.execute(
            select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED.value).group_by(Job.queue)
        )
        return {queue: int(n) for queue, n in rows}


def new_job(session_factory: sessionmaker[Session], owner: ApiKey) -> str:
    with session_scope(session_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=REQUEST)
        return job.id


def test_counters_follow_every_change_of_a_queued_job(session_factory, owner, tmp_path) -> None:
    recount_depths(session_factory)  # other tests' rows may have been written past the lifecycle
    assert counted(session_factory) == exact(session_factory)
    storage = LocalStorage(tmp_path)
    ids = [new_job(session_factory, owner) for _ in range(8)]
    assert counted(session_factory) == exact(session_factory)

    with session_scope(session_factory) as session:  # start
        claim_job(session=session, job_id=ids[0], worker_id="w1")
    with session_scope(session_factory) as session:  # requeue
        lifecycle.requeue(session=session, job=session.get(Job, ids[0]), reason="lost")
    with session_scope(session_factory) as session:  # start, then fail
        claim_job(session=session, job_id=ids[1], worker_id="w1")
    with session_scope(session_factory) as session:
        fail_owned(session=session, job_id=ids[1], worker_id="w1", code="boom", message="boom")
    with session_scope(session_factory) as session:  # a queued job fails (operator, limits)
        lifecycle.fail(session=session, job=session.get(Job, ids[2]), code="x", message="x")
    with session_scope(session_factory) as session:  # cancel
        cancel_job(session=session, owner=owner, job_id=ids[3])
    with session_scope(session_factory) as session:  # delete a queued job, and a cancelled one
        delete_job(session=session, owner=owner, job_id=ids[4], storage=storage)
        delete_job(session=session, owner=owner, job_id=ids[3], storage=storage)
    with session_scope(session_factory) as session:  # several changes in one transaction
        for job_id in ids[5:7]:
            lifecycle.cancel(session=session, job=session.get(Job, job_id))
        lifecycle.requeue(session=session, job=session.get(Job, ids[2]), reason="retried by an operator")
    assert counted(session_factory) == exact(session_factory)

    # A rolled-back change changes nothing.
    before = counted(session_factory)
    session = session_factory()
    try:
        create_job(session=session, owner=owner, request=REQUEST)
        lifecycle.cancel(session=session, job=session.get(Job, ids[7]))
        session.rollback()
    finally:
        session.close()
    assert counted(session_factory) == before == exact(session_factory)


def test_a_new_jobs_position_is_the_counted_one_when_submits_are_sequential(session_factory, owner) -> None:
    recount_depths(session_factory)
    for _ in range(5):
        with session_scope(session_factory) as session:
            job, public, created = submit_job(session=session, owner=owner, request=REQUEST)
            assert created
        with session_scope(session_factory) as session:
            stored = session.get(Job, job.id)
            assert public.queue_position == queue_position(session=session, job=stored)
    with session_scope(session_factory) as session:  # one leaves the queue: the next position drops
        first = session.scalar(
            select(Job).where(Job.status == JobStatus.QUEUED.value, Job.queue == job.queue).order_by(Job.id).limit(1)
        )
        lifecycle.cancel(session=session, job=first)
    with session_scope(session_factory) as session:
        job, public, _ = submit_job(session=session, owner=owner, request=REQUEST)
    with session_scope(session_factory) as session:
        assert public.queue_position == queue_position(session=session, job=session.get(Job, job.id))


def test_the_sweeper_repairs_a_corrupted_counter(session_factory, owner, db_settings) -> None:
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        queue = session.get(Job, job_id).queue
        session.execute(update(QueueDepth).where(QueueDepth.queue == queue).values(queued=1000))
        session.add(QueueDepth(queue="nobody-uses-this", shard=3, queued=7))
    assert counted(session_factory) != exact(session_factory)
    sweeper = Sweeper(
        session_factory=session_factory,
        publisher=_NoPublisher(),
        settings=db_settings.model_copy(update={"sweep_interval_s": 0.05}),
    )
    sweeper.start()
    try:
        for _ in range(100):
            if counted(session_factory) == exact(session_factory):
                break
            threading.Event().wait(0.05)
    finally:
        sweeper.stop()
    assert counted(session_factory) == exact(session_factory)
    with session_scope(session_factory) as session:
        assert session.get(QueueDepth, ("nobody-uses-this", 3)) is None


def test_concurrent_submits_and_changes_never_deadlock_and_stay_exact(session_factory, owner) -> None:
    recount_depths(session_factory)
    errors: list[BaseException] = []
    done: list[str] = []
    lock = threading.Lock()

    def submitter() -> None:
        try:
            for _ in range(15):
                with session_scope(session_factory) as session:
                    job, public, _ = submit_job(session=session, owner=owner, request=REQUEST)
                    assert public.queue_position is not None and public.queue_position >= 1
                with lock:
                    done.append(job.id)
        except BaseException as exc:
            errors.append(exc)

    def canceller() -> None:  # several queued jobs leave in one transaction, against the submits
        try:
            for _ in range(10):
                with session_scope(session_factory) as session:
                    jobs = session.scalars(
                        select(Job)
                        .where(Job.status == JobStatus.QUEUED.value)
                        .order_by(Job.id)
                        .limit(3)
                        .with_for_update(skip_locked=True)
                    ).all()
                    for job in jobs:
                        lifecycle.cancel(session=session, job=job)
        except BaseException as exc:
            errors.append(exc)

    def recounter() -> None:
        try:
            for _ in range(5):
                recount_depths(session_factory)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(6)]
    threads += [threading.Thread(target=canceller) for _ in range(2)]
    threads += [threading.Thread(target=recounter)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(done) == 90
    assert counted(session_factory) == exact(session_factory)


def test_recount_works_on_the_embedded_sqlite_database(tmp_path) -> None:
    from jobs import migrate
    from jobs.db import make_engine, make_session_factory
    from jobs.keys import create_key

    settings = Settings(data_dir=tmp_path)
    migrate.upgrade(settings)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    try:
        with session_scope(factory) as session:
            owner = create_key(session=session, name="embedded").record
        ids = [new_job(factory, owner) for _ in range(3)]
        with session_scope(factory) as session:
            lifecycle.cancel(session=session, job=session.get(Job, ids[0]))
        with session_scope(factory) as session:
            queue = session.get(Job, ids[1]).queue
        assert counted(factory) == exact(factory) == {queue: 2}
        with session_scope(factory) as session:
            session.execute(update(QueueDepth).values(queued=50))
        assert recount_depths(factory) == exact(factory)
        assert counted(factory) == exact(factory)
        with session_scope(factory) as session:
            _, public, _ = submit_job(session=session, owner=owner, request=REQUEST)
        assert public.queue_position == 3
    finally:
        engine.dispose()


class _NoPublisher:
    def publish(self, job_id: str, queue: str) -> None:
        pass


def test_a_recount_frozen_mid_transaction_blocks_submits_only_until_its_session_ends(
    session_factory, owner, monkeypatch
) -> None:
    """A process that stops while its recount holds the table lock (SIGSTOP, a VM pause: seen when
    a test paused a worker at that moment) would block every submit until it woke. PostgreSQL ends
    the idle recount's session after RECOUNT_IDLE_TIMEOUT_S, and the submit goes through."""
    from jobs import depths

    monkeypatch.setattr(depths, "RECOUNT_IDLE_TIMEOUT_S", 0.5)
    frozen = session_factory()
    depths.recount(frozen)  # holds LOCK TABLE queue_depths, then its process "stops": no commit
    try:
        done: list[str] = []

        def submit() -> None:
            with session_scope(session_factory) as session:
                job, _, _ = submit_job(session=session, owner=owner, request=REQUEST)
            done.append(job.id)

        thread = threading.Thread(target=submit)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive() and len(done) == 1  # went through once the frozen session ended
        assert counted(session_factory) == exact(session_factory)
    finally:
        frozen.invalidate()  # its connection was terminated by the server


def test_a_submits_counter_change_rides_in_its_event_insert(session_factory, owner) -> None:
    """The +1 is written by the event's INSERT (``depths.carry``): nothing is left for the commit,
    the transaction sees its own change at once, and a rollback takes it back."""
    recount_depths(session_factory)
    before = counted(session_factory)
    session = session_factory()
    try:
        job, _ = create_job(session=session, owner=owner, request=REQUEST)
        assert not session.info.get("vidq.queue_depth_changes")  # carried: nothing pending
        in_transaction = session.scalar(
            select(func.coalesce(func.sum(QueueDepth.queued), 0)).where(QueueDepth.queue == job.queue)
        )
        assert in_transaction == before.get(job.queue, 0) + 1  # written in the transaction, not pending
        session.rollback()
    finally:
        session.close()
    assert counted(session_factory) == before
    new_job(session_factory, owner)
    assert counted(session_factory) == exact(session_factory) != before


def test_changes_to_several_queues_are_not_carried_but_written_in_queue_order_at_the_commit(session_factory) -> None:
    from jobs import depths

    with session_factory() as session:
        depths.record(session, "test-carry-b", 1)
        depths.record(session, "test-carry-a", -1)
        assert depths.carry(session) is None
        assert session.info["vidq.queue_depth_changes"] == {"test-carry-b": 1, "test-carry-a": -1}
        session.rollback()
