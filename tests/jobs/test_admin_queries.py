"""The operator's queries and the attempt log, against PostgreSQL."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from jobs.admin import stats
from jobs.admin.jobs import JobFilter, search_jobs
from jobs.attempts import list_attempts
from jobs.crud import create_job
from jobs.db import session_scope, utcnow
from jobs.dispatch import sweep
from jobs.execution import claim_job, complete_owned, fail_owned
from jobs.keys import create_key
from jobs.logs import JobIdFilter, JsonFormatter, job_context
from jobs.models import ApiKey, Job
from jobs.settings import Settings
from jobs.validation import JobRequest


class NullPublisher:
    def publish(self, job_id: str, queue: str) -> None:
        pass


def new_job(factory: sessionmaker[Session], owner: ApiKey, prompt: str = "a fox") -> str:
    with session_scope(factory) as session:
        job, _ = create_job(
            session=session,
            owner=owner,
            request=JobRequest(model="tiny-wan", prompt=prompt, size="96x64", num_frames=9, num_inference_steps=4),
        )
        return job.id


def test_each_run_is_an_attempt_with_its_worker_and_outcome(session_factory, owner, db_settings: Settings) -> None:
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="gpu-a")
        session.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=60)  # gpu-a stopped beating
    sweep(
        session_factory=session_factory,
        publisher=NullPublisher(),
        settings=db_settings,
    )
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="gpu-b")
    with session_scope(session_factory) as session:
        fail_owned(
            session=session, job_id=job_id, worker_id="gpu-b", code="render_error", message="boom", trace="Traceback…"
        )
    with session_scope(session_factory) as session:
        attempts = list_attempts(session=session, job_id=job_id)
    assert [(a.attempt, a.worker_id, a.outcome) for a in attempts] == [
        (1, "gpu-a", "worker_lost"),
        (2, "gpu-b", "failed"),
    ]
    assert attempts[1].trace == "Traceback…" and all(a.ended_at is not None for a in attempts)


def test_a_completed_attempt_counts_as_gpu_seconds_of_its_key(session_factory, db_settings: Settings) -> None:
    with session_scope(session_factory) as session:
        owner = create_key(session=session, name="usage").record
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        job = claim_job(session=session, job_id=job_id, worker_id="gpu-a")
        job.started_at = utcnow() - timedelta(seconds=30)
        list_attempts(session=session, job_id=job_id)[0].started_at = job.started_at
    with session_scope(session_factory) as session:
        complete_owned(
            session=session,
            job_id=job_id,
            worker_id="gpu-a",
            video_key="v",
            thumbnail_key="t",
            stage_timings={"denoising": 2.0},
            result_ttl_s=3600,
        )
    with session_scope(session_factory) as session:
        usage = {u.key.id: u for u in stats.key_usage(session=session)}[owner.id]
        assert usage.jobs == 1
        assert 29 <= usage.gpu_seconds <= 40
        times = stats.completed_times(session=session)
        assert 0.5 in times.step_s  # 2.0 s of denoising over 4 steps


def test_search_filters_by_prompt_and_key_and_pages_with_a_stable_cursor(session_factory) -> None:
    with session_scope(session_factory) as session:
        owner = create_key(session=session, name="search").record
    ids = [new_job(session_factory, owner, prompt=f"50% red_fox {i}") for i in range(5)]
    new_job(session_factory, owner, prompt="a whale")
    where = JobFilter(owner_id=owner.id, prompt="50% red_fox")
    seen: list[str] = []
    cursor = None
    with session_scope(session_factory) as session:
        while True:
            page = search_jobs(session=session, where=where, cursor=cursor, limit=2)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == sorted(ids, reverse=True)
        assert search_jobs(session=session, where=JobFilter(owner_id=owner.id, prompt="50%_red")).jobs == []
        by_status = search_jobs(session=session, where=JobFilter(owner_id=owner.id), sort="status", desc=False, limit=3)
        rest = search_jobs(
            session=session,
            where=JobFilter(owner_id=owner.id),
            sort="status",
            desc=False,
            limit=10,
            cursor=by_status.next_cursor,
        )
        assert len({j.id for j in by_status.jobs + rest.jobs}) == 6


def test_percentile_is_nearest_rank() -> None:
    assert stats.percentile([], 50) is None
    assert stats.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert stats.percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_the_overview_counts_the_last_hour(session_factory) -> None:
    with session_scope(session_factory) as session:
        before = stats.overview(session=session)
    with session_scope(session_factory) as session:
        owner = create_key(session=session, name="overview").record
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w")
    with session_scope(session_factory) as session:
        fail_owned(session=session, job_id=job_id, worker_id="w", code="render_error", message="x")
    with session_scope(session_factory) as session:
        after = stats.overview(session=session)
    assert after.counts["failed"] == before.counts["failed"] + 1
    assert after.failure_rate is not None and after.failure_rate > 0
    assert len(after.throughput_chart["bars"]) == 12


def test_json_logs_carry_the_job_id_from_the_context() -> None:
    record = logging.makeLogRecord(
        {"name": "worker.render", "levelname": "INFO", "msg": "rendering %s", "args": ("x",)}
    )
    with job_context("video_123"):
        JobIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["job_id"] == "video_123"
    assert line["message"] == "rendering x" and line["level"] == "INFO" and line["logger"] == "worker.render"
