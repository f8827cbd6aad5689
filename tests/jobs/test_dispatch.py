"""The outbox relay and the sweeper against the real PostgreSQL."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from jobs.crud import create_job
from jobs.db import session_scope, utcnow
from jobs.dispatch import lost_after_s, sweep
from jobs.events import NullEventBus
from jobs.execution import claim_job, retry_owned
from jobs.models import ApiKey, DispatchOutbox, Job
from jobs.public import VideoPublic
from jobs.relay import fan_out, relay_outbox
from jobs.settings import Settings
from jobs.validation import JobRequest
from jobs.workers import MemoryWorkerRegistry, WorkerStatus


@pytest.fixture(autouse=True)
def no_other_jobs(session_factory: sessionmaker[Session]) -> Iterator[None]:
    """A sweep acts on every job of the database, which the whole session's tests share: jobs other
    tests claimed or completed moments ago would read as later publishes that were claimed (so a
    job whose publish a test dates back looks overtaken) or as results to expire. Each test here
    starts from no jobs (their events, outbox rows, attempts and deliveries go with them)."""
    with session_scope(session_factory) as session:
        session.execute(text("TRUNCATE jobs, queue_depths CASCADE"))
    yield


class RecordingPublisher:
    def __init__(self, fail: bool = False) -> None:
        self.published: list[tuple[str, str]] = []
        self.fail = fail
        self._lock = threading.Lock()

    def publish(self, job_id: str, queue: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        with self._lock:
            self.published.append((job_id, queue))


def submit(session_factory: sessionmaker[Session], owner: ApiKey) -> str:
    """A new job, fanned out by the relay (its outbox row written) as the API's relay would."""
    with session_scope(session_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan"))
    fan_out(session_factory=session_factory, bus=NullEventBus())
    return job.id


def pending_outbox(session_factory: sessionmaker[Session], job_id: str) -> list[DispatchOutbox]:
    with session_scope(session_factory) as session:
        return list(
            session.scalars(
                select(DispatchOutbox).where(DispatchOutbox.job_id == job_id, DispatchOutbox.published_at.is_(None))
            )
        )


def test_a_new_job_gets_one_outbox_row_from_its_queued_event(session_factory, owner) -> None:
    with session_scope(session_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan"))
    assert pending_outbox(session_factory, job.id) == []  # committed: the event, not yet its fan-out
    fan_out(session_factory=session_factory, bus=NullEventBus())
    fan_out(session_factory=session_factory, bus=NullEventBus())
    rows = pending_outbox(session_factory, job.id)
    assert [(r.job_id, r.queue) for r in rows] == [(job.id, "gpu.wan")]


def test_relay_publishes_each_pending_row_once(session_factory, owner) -> None:
    job_id = submit(session_factory, owner)
    publisher = RecordingPublisher()
    relay_outbox(session_factory=session_factory, publisher=publisher)
    relay_outbox(session_factory=session_factory, publisher=publisher)
    assert publisher.published.count((job_id, "gpu.wan")) == 1
    assert pending_outbox(session_factory, job_id) == []
    with session_scope(session_factory) as session:
        assert session.get(Job, job_id).dispatched_at is not None


def test_relay_keeps_rows_while_the_broker_is_down(session_factory, owner) -> None:
    job_id = submit(session_factory, owner)
    assert relay_outbox(session_factory=session_factory, publisher=RecordingPublisher(fail=True)) == 0
    rows = pending_outbox(session_factory, job_id)
    assert len(rows) == 1 and "broker down" in (rows[0].last_error or "")
    publisher = RecordingPublisher()
    relay_outbox(session_factory=session_factory, publisher=publisher)
    assert (job_id, "gpu.wan") in publisher.published


def test_relay_skips_a_row_whose_job_is_being_deleted_instead_of_deadlocking(session_factory, owner) -> None:
    """A delete locks the job, then (cascade) its outbox rows; the relay locks a row, then its job.
    The relay must not wait for the job: it leaves the row, and the delete completes."""
    job_id = submit(session_factory, owner)
    publisher = RecordingPublisher()
    with session_scope(session_factory) as deleting:
        deleting.scalars(select(Job).where(Job.id == job_id).with_for_update()).one()  # as crud.delete_job
        relayed: list[int] = []
        relay = threading.Thread(
            target=lambda: relayed.append(relay_outbox(session_factory=session_factory, publisher=publisher))
        )
        relay.start()
        relay.join(timeout=30)
        assert not relay.is_alive() and relayed == [0]  # it did not wait on the locked job
        deleting.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})
    assert publisher.published == []
    assert pending_outbox(session_factory, job_id) == []  # gone with its job
    # an unlocked job's row goes out on the next pass as usual
    other = submit(session_factory, owner)
    assert relay_outbox(session_factory=session_factory, publisher=publisher) == 1
    assert publisher.published == [(other, "gpu.wan")]


def test_fan_out_waits_for_a_job_delete_instead_of_deadlocking_with_it(session_factory, owner) -> None:
    """A delete holds the job, then (cascade) needs its events; the fan-out must not hold those
    events while it waits for the job."""
    with session_scope(session_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan"))
    outcome: list[object] = []

    def relay() -> None:
        try:
            outcome.append(fan_out(session_factory=session_factory, bus=NullEventBus()))
        except Exception as exc:  # a deadlock victim
            outcome.append(exc)

    with session_scope(session_factory) as deleting:
        deleting.scalars(select(Job).where(Job.id == job.id).with_for_update()).one()  # as crud.delete_job
        thread = threading.Thread(target=relay)
        thread.start()
        with session_scope(session_factory) as watch:  # until the relay waits for the job's lock
            for _ in range(600):
                waiting = watch.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND datname = current_database()"
                    )
                )
                if waiting or not thread.is_alive():
                    break
                watch.rollback()
                time.sleep(0.05)
        deleting.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job.id})
    thread.join(timeout=60)
    assert outcome == [0]  # nothing to relay any more, and no deadlock
    with session_scope(session_factory) as session:
        assert session.scalar(select(func.count()).select_from(DispatchOutbox)) == 0


def test_concurrent_relays_never_publish_a_row_twice(session_factory, owner) -> None:
    job_ids = [submit(session_factory, owner) for _ in range(30)]
    publisher = RecordingPublisher()
    threads = [
        threading.Thread(target=relay_outbox, kwargs={"session_factory": session_factory, "publisher": publisher})
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    published_ids = [job_id for job_id, _ in publisher.published]
    assert len(published_ids) == len(set(published_ids))
    assert set(job_ids) <= set(published_ids)


def test_a_job_nobody_claims_is_published_again_once_per_interval(session_factory, owner, db_settings) -> None:
    """Decided from the database: whatever happened to the message (lost in a Redis restart, taken by a
    worker that died before claiming), a job still queued an interval after its publish goes out again."""
    job_id = submit(session_factory, owner)
    publisher = RecordingPublisher()
    relay_outbox(session_factory=session_factory, publisher=publisher)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    assert publisher.published.count((job_id, "gpu.wan")) == 1  # within the interval: left alone

    _age_dispatch(session_factory, job_id, db_settings)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    assert publisher.published.count((job_id, "gpu.wan")) == 2  # once more, not once per pass

    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w")
    _age_dispatch(session_factory, job_id, db_settings)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    assert publisher.published.count((job_id, "gpu.wan")) == 2  # claimed: nothing to repair


def test_a_job_waiting_behind_a_backlog_is_not_published_again(session_factory, owner, db_settings) -> None:
    """With worker records the sweeper republishes only a message that cannot still be queued: one a
    later-published job overtook (FIFO), or one a worker idle for the whole interval would have taken."""
    first, second = submit(session_factory, owner), submit(session_factory, owner)
    publisher = RecordingPublisher()
    relay_outbox(session_factory=session_factory, publisher=publisher)
    registry = MemoryWorkerRegistry(ttl_s=3600)
    busy = WorkerStatus("busy", "h", 1, heartbeat_at=time.time(), started_at=0, queues=["gpu.wan"], current_job="x")
    registry.publish(busy)
    _age_dispatch(session_factory, first, db_settings)
    _age_dispatch(session_factory, second, db_settings)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings, workers=registry)
    assert publisher.published.count((first, "gpu.wan")) == 1  # behind the busy worker's backlog: left alone

    # the job published after `first` is claimed: `first`'s message was taken or lost
    with session_scope(session_factory) as session:
        first_published = session.get(Job, first).dispatched_at
        session.get(Job, second).dispatched_at = first_published + timedelta(milliseconds=1)
        claim_job(session=session, job_id=second, worker_id="busy")
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings, workers=registry)
    assert publisher.published.count((first, "gpu.wan")) == 2

    # an idle worker of the queue would have taken a waiting message
    third = submit(session_factory, owner)
    relay_outbox(session_factory=session_factory, publisher=publisher)
    _age_dispatch(session_factory, third, db_settings)
    idle = WorkerStatus(
        "idle", "h", 2, heartbeat_at=time.time(), started_at=0, queues=["gpu.wan"], idle_since=time.time()
    )
    registry.publish(idle)  # idle only for a moment: it may be about to take the message
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings, workers=registry)
    assert publisher.published.count((third, "gpu.wan")) == 1
    idle.idle_since = time.time() - 60  # idle for the whole interval: it would have taken the message
    registry.publish(idle)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings, workers=registry)
    assert publisher.published.count((third, "gpu.wan")) == 2


def test_a_job_backing_off_is_published_when_its_back_off_is_over(session_factory, owner, db_settings) -> None:
    job_id = submit(session_factory, owner)
    publisher = RecordingPublisher()
    relay_outbox(session_factory=session_factory, publisher=publisher)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w")
    with session_scope(session_factory) as session:
        retry_owned(
            session=session,
            job_id=job_id,
            worker_id="w",
            code="storage_unavailable",
            message="upload kept failing",
            max_attempts=3,
            backoff_s=60,
            backoff_max_s=600,
        )
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    assert publisher.published.count((job_id, "gpu.wan")) == 1  # still backing off
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        assert VideoPublic.from_job(job, queue_position=1).retry.attempt == 2
        assert "storage_unavailable" in VideoPublic.from_job(job, queue_position=1).retry.reason
        job.retry_at = utcnow() - timedelta(seconds=1)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    assert publisher.published.count((job_id, "gpu.wan")) == 2


def test_a_job_failing_transiently_on_its_last_attempt_fails_saying_what_kept_failing(
    session_factory, owner, db_settings
) -> None:
    job_id = submit(session_factory, owner)
    for attempt in (1, 2):
        with session_scope(session_factory) as session:
            claim_job(session=session, job_id=job_id, worker_id="w")
        with session_scope(session_factory) as session:
            job = retry_owned(
                session=session,
                job_id=job_id,
                worker_id="w",
                code="storage_unavailable",
                message=f"upload failed ({attempt})",
                max_attempts=2,
                backoff_s=0,
                backoff_max_s=0,
            )
            expected = "queued" if attempt == 1 else "failed"
            assert job is not None and job.status == expected
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.error_code, job.attempts) == ("storage_unavailable", 2)
        assert "gave up after 2 attempts" in job.error_message


def test_a_dead_workers_job_is_taken_back_from_its_status_record_before_the_timeout(
    session_factory, owner, db_settings
) -> None:
    settings = db_settings.model_copy(update={"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 60.0})
    registry = MemoryWorkerRegistry(ttl_s=3600)
    now = time.time()
    beats = lost_after_s(settings)
    registry.publish(WorkerStatus("dead", "h", 1, heartbeat_at=now - beats - 1, started_at=0, current_job="x"))
    registry.publish(WorkerStatus("alive", "h", 2, heartbeat_at=now, started_at=0))
    jobs = {}
    for worker_id in ("dead", "alive", "unknown"):
        jobs[worker_id] = submit(session_factory, owner)
        with session_scope(session_factory) as session:
            claim_job(session=session, job_id=jobs[worker_id], worker_id=worker_id)
            # the row heartbeat is a few beats old, far from the timeout
            session.get(Job, jobs[worker_id]).heartbeat_at = utcnow() - timedelta(seconds=beats + 1)
    registry.publish(WorkerStatus("alive", "h", 2, heartbeat_at=now, started_at=0, current_job=jobs["alive"]))
    sweep(session_factory=session_factory, publisher=RecordingPublisher(), settings=settings, workers=registry)
    with session_scope(session_factory) as session:
        status = {worker_id: session.get(Job, job_id).status for worker_id, job_id in jobs.items()}
        retry = VideoPublic.from_job(session.get(Job, jobs["dead"]), queue_position=1).retry
    # no record for "unknown": only the heartbeat timeout may decide, and it has not passed
    assert status == {"dead": "queued", "alive": "in_progress", "unknown": "in_progress"}
    assert retry.attempt == 2 and "worker dead stopped responding" in retry.reason


def test_sweeper_requeues_a_job_whose_worker_stopped_heartbeating(session_factory, owner, db_settings) -> None:
    job_id = submit(session_factory, owner)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="dead-worker")
    _stale_heartbeat(session_factory, job_id, db_settings)
    publisher = RecordingPublisher()
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.worker_id, job.attempts) == ("queued", None, 1)
    assert (job_id, "gpu.wan") in publisher.published

    # the second attempt's worker dies too: with max_attempts=2 the job fails for good
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="dead-worker-2")
    _stale_heartbeat(session_factory, job_id, db_settings)
    sweep(session_factory=session_factory, publisher=publisher, settings=db_settings)
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)


def test_sweeper_leaves_a_live_worker_alone(session_factory, owner, db_settings) -> None:
    job_id = submit(session_factory, owner)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="live-worker")
    sweep(
        session_factory=session_factory,
        publisher=RecordingPublisher(),
        settings=db_settings,
    )
    with session_scope(session_factory) as session:
        assert session.get(Job, job_id).status == "in_progress"


def _age_dispatch(session_factory, job_id: str, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(session_factory) as session:
        session.get(Job, job_id).dispatched_at = utcnow() - timedelta(seconds=settings.redispatch_after_s + 1)


def _stale_heartbeat(session_factory, job_id: str, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with session_scope(session_factory) as session:
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s + 1)


def test_sweeper_deletes_expired_results(session_factory, owner, db_settings, tmp_path) -> None:
    from jobs.lifecycle import complete
    from jobs.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    storage.ensure_ready()
    source = tmp_path / "source.bin"
    source.write_bytes(b"mp4")
    fresh_id, old_id = submit(session_factory, owner), submit(session_factory, owner)
    for job_id, ttl in ((fresh_id, 3600), (old_id, 60)):
        video, thumb = f"videos/{job_id}/video.mp4", f"videos/{job_id}/thumbnail.jpg"
        storage.put_file(video, source, "video/mp4")
        storage.put_file(thumb, source, "image/jpeg")
        with session_scope(session_factory) as session:
            job = session.get(Job, job_id)
            claim_job(session=session, job_id=job_id, worker_id="w")
            complete(session=session, job=job, video_key=video, thumbnail_key=thumb, stage_timings={}, result_ttl_s=ttl)
    with session_scope(session_factory) as session:
        session.get(Job, old_id).expires_at = utcnow() - timedelta(seconds=1)

    report = sweep(
        session_factory=session_factory,
        publisher=RecordingPublisher(),
        settings=db_settings,
        storage=storage,
    )
    assert report.expired == 1
    assert not storage.exists(f"videos/{old_id}/video.mp4") and not storage.exists(f"videos/{old_id}/thumbnail.jpg")
    assert storage.exists(f"videos/{fresh_id}/video.mp4")
    with session_scope(session_factory) as session:
        assert session.get(Job, old_id).video_key is None
        assert session.get(Job, fresh_id).video_key is not None


class BatchPublisher(RecordingPublisher):
    """A publisher that takes a whole batch at once (as ``CeleryPublisher.publish_many`` does)."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__(fail)
        self.batches: list[list[tuple[str, str]]] = []

    def publish_many(self, messages: list[tuple[str, str]]) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.batches.append(list(messages))


def test_the_relay_hands_a_whole_batch_to_a_batching_publisher_once(session_factory, owner) -> None:
    ids = [submit(session_factory, owner) for _ in range(5)]
    publisher = BatchPublisher()
    assert relay_outbox(session_factory=session_factory, publisher=publisher) == 5
    assert relay_outbox(session_factory=session_factory, publisher=publisher) == 0
    assert publisher.batches == [[(job_id, "gpu.wan") for job_id in ids]] and publisher.published == []
    with session_scope(session_factory) as session:
        rows = session.scalars(select(DispatchOutbox).where(DispatchOutbox.job_id.in_(ids))).all()
        assert all(row.published_at is not None and row.publish_attempts == 1 for row in rows)
        assert all(session.get(Job, job_id).dispatched_at is not None for job_id in ids)


def test_a_failed_batch_keeps_every_row_for_the_next_pass(session_factory, owner) -> None:
    ids = [submit(session_factory, owner) for _ in range(3)]
    assert relay_outbox(session_factory=session_factory, publisher=BatchPublisher(fail=True)) == 0
    for job_id in ids:
        [row] = pending_outbox(session_factory, job_id)
        assert row.publish_attempts == 1 and "broker down" in (row.last_error or "")
    publisher = BatchPublisher()
    assert relay_outbox(session_factory=session_factory, publisher=publisher) == 3
    assert sorted(publisher.batches[0]) == sorted((job_id, "gpu.wan") for job_id in ids)


@pytest.mark.parametrize("path", ["direct", "kombu-batch", "older-kombu"])
def test_celery_publish_many_puts_every_message_on_its_queue(
    redis_url: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real broker: the batch (written directly, ``jobs.task_messages``; or through kombu, one
    pipelined round trip on kombu 5.7+, one by one on older kombu, played here by a Producer without
    ``batch``) leaves one render message per job on its queue, in order."""
    import kombu

    if path == "older-kombu":
        monkeypatch.delattr(kombu.Producer, "batch", raising=False)
    elif path == "kombu-batch" and not hasattr(kombu.Producer, "batch"):
        pytest.skip("this kombu has no Producer.batch")
    import redis

    from jobs.broker import RENDER_TASK, make_celery
    from jobs.dispatch import CeleryPublisher, MemoryDispatchMarkers

    settings = Settings(redis_url=redis_url, database_url="postgresql+psycopg://unused@127.0.0.1/unused")
    app = make_celery(settings)
    queues = [f"test-batch-{uuid.uuid4().hex[:8]}", f"test-batch-{uuid.uuid4().hex[:8]}"]
    messages = [(f"video_{n}", queues[n % 2]) for n in range(7)]
    client = redis.Redis.from_url(redis_url)
    publisher = CeleryPublisher(app, MemoryDispatchMarkers())
    assert publisher.writer is not None  # a Redis broker: written directly unless told otherwise
    if path != "direct":
        publisher.writer = None
    try:
        publisher.publish_many(messages)
        for queue in queues:
            raw = client.lrange(queue, 0, -1)[::-1]  # LPUSH'ed: oldest last
            bodies = [json.loads(message) for message in raw]
            assert [body["headers"]["task"] for body in bodies] == [RENDER_TASK] * len(bodies)
            args = [json.loads(base64.b64decode(body["body"]))[0] for body in bodies]
            assert args == [[job_id] for job_id, q in messages if q == queue]
    finally:
        client.delete(*queues)
        client.close()


def test_the_relay_thread_rests_as_long_as_its_last_pass_took(session_factory, db_settings) -> None:  # type: ignore[no-untyped-def]
    """Under a stream of commits the passes are spaced out (bigger batches, fewer GIL grabs in an API
    process), and a lone commit after a quiet spell is still relayed."""
    from jobs.dispatch import RELAY_MAX_REST_S, Sweeper

    pass_s = 0.05
    assert pass_s < RELAY_MAX_REST_S
    started: list[float] = []
    ran = threading.Event()

    class SlowRelay:
        def run(self) -> None:
            started.append(time.monotonic())
            time.sleep(pass_s)
            ran.set()

    settings = db_settings.model_copy(update={"sweep_interval_s": 60.0})  # passes only when kicked
    sweeper = Sweeper(session_factory=session_factory, publisher=object(), settings=settings, repairs=False)  # type: ignore[arg-type]
    sweeper.relay = SlowRelay()  # type: ignore[assignment]
    sweeper.start()
    try:
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:  # a commit every 10 ms
            sweeper.kick()
            time.sleep(0.01)
        busy = list(started)
        time.sleep(2 * pass_s + 0.3)  # quiet
        ran.clear()
        sweeper.kick()
        assert ran.wait(5), "a lone commit after a quiet spell was not relayed"
    finally:
        sweeper.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(busy)]
    assert len(busy) >= 3, busy  # it keeps relaying under load
    assert min(gaps) >= 2 * pass_s - 0.01, gaps  # each pass, then as long again at rest
