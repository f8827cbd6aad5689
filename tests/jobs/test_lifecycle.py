"""Every state change goes through `jobs.lifecycle`, which appends its event in the same transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs import lifecycle
from jobs.attempts import AttemptOutcome, list_attempts
from jobs.crud import cancel_job, create_job
from jobs.db import session_scope
from jobs.execution import claim_job, complete_owned
from jobs.models import ApiKey, Job, JobEvent
from jobs.states import IllegalTransition
from jobs.validation import JobRequest


def new_job(session_factory: sessionmaker[Session], owner: ApiKey) -> str:
    with session_scope(session_factory) as session:
        job, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a fox", model="tiny-wan"))
        return job.id


def events_of(session_factory: sessionmaker[Session], job_id: str) -> list[tuple[int, str, str]]:
    with session_scope(session_factory) as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        return [(row.seq, row.type, row.data["status"]) for row in rows]


def test_each_change_appends_one_numbered_event_with_the_public_job(session_factory, owner) -> None:
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w1")
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        lifecycle.requeue(session=session, job=job, reason="worker w1 lost", attempt_outcome=AttemptOutcome.LOST)
    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w2")
    with session_scope(session_factory) as session:
        complete_owned(
            session=session,
            job_id=job_id,
            worker_id="w2",
            video_key="v",
            thumbnail_key="t",
            stage_timings={"denoising": 1.0},
            result_ttl_s=60,
        )

    assert events_of(session_factory, job_id) == [
        (1, "video.queued", "queued"),
        (2, "video.started", "in_progress"),
        (3, "video.queued", "queued"),
        (4, "video.started", "in_progress"),
        (5, "video.completed", "completed"),
    ]
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        assert job.last_event_seq == 5
        last = session.scalar(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq == 5))
        assert last.data["stage_timings"] == {"denoising": 1.0} and last.data["attempts"] == 2
        assert [(a.worker_id, a.outcome) for a in list_attempts(session=session, job_id=job_id)] == [
            ("w1", AttemptOutcome.LOST),
            ("w2", AttemptOutcome.COMPLETED),
        ]


def test_a_rolled_back_change_leaves_no_event(session_factory, owner) -> None:
    job_id = new_job(session_factory, owner)
    with pytest.raises(RuntimeError), session_scope(session_factory) as session:
        cancel_job(session=session, owner=owner, job_id=job_id)
        raise RuntimeError("the request fails after the change")
    assert events_of(session_factory, job_id) == [(1, "video.queued", "queued")]


def test_an_illegal_move_appends_nothing(session_factory, owner) -> None:
    job_id = new_job(session_factory, owner)
    with session_scope(session_factory) as session:
        cancel_job(session=session, owner=owner, job_id=job_id)
    with pytest.raises(IllegalTransition), session_scope(session_factory) as session:
        lifecycle.start(session=session, job=session.get(Job, job_id), worker_id="late")
    assert [seq for seq, _, _ in events_of(session_factory, job_id)] == [1, 2]


def test_a_stored_jobs_status_cannot_be_set_outside_the_lifecycle(session_factory, owner) -> None:
    job_id = new_job(session_factory, owner)
    with pytest.raises(lifecycle.StatusChangedOutsideLifecycle), session_scope(session_factory) as session:
        session.get(Job, job_id).status = "cancelled"  # what a caller forgetting its event would do
    with session_scope(session_factory) as session:
        assert session.get(Job, job_id).status == "queued"
