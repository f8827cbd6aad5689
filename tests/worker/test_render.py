"""render_job called directly (no Celery), against the real PostgreSQL and a local storage folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.attempts import AttemptOutcome
from jobs.crud import create_job
from jobs.db import session_scope
from jobs.errors import JobCancelled
from jobs.execution import claim_job, record_progress
from jobs.keys import create_key
from jobs.lifecycle import requeue
from jobs.models import Job
from jobs.settings import Settings
from jobs.validation import JobRequest
from spec.stages import Stage, progress_percent
from worker.context import WorkerContext, build_context
from worker.render import RenderOutcome, render_job


@pytest.fixture(scope="module")
def ctx(database_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    settings = Settings(
        database_url=database_url, models_dir=models_dir, data_dir=tmp_path_factory.mktemp("data"), device="cpu"
    )
    return build_context(settings)


def submit(ctx: WorkerContext, **fields: object) -> str:
    with session_scope(ctx.session_factory) as session:
        owner = create_key(session=session, name="render-test").record
        job, _ = create_job(
            session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan", **fields)
        )
        return job.id


def test_a_job_is_rendered_stored_and_never_rendered_twice(ctx: WorkerContext) -> None:
    job_id = submit(ctx, num_inference_steps=2)
    assert render_job(job_id, ctx=ctx) is RenderOutcome.COMPLETED
    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.current_step, job.progress) == ("completed", 1, 2, 100)
        completed_at = job.completed_at
    assert ctx.storage.exists(job.video_key) and ctx.storage.exists(job.thumbnail_key)
    # the engine's memory plan is recorded with the job (CPU: no budget, nothing offloaded)
    assert job.memory is not None and job.memory["plan"]["offload"] == "none"
    assert set(job.memory) == {"plan", "stage_peak_bytes"}

    # the same message delivered again (e.g. after a broker restart) is dropped
    assert render_job(job_id, ctx=ctx) is RenderOutcome.SKIPPED
    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.attempts, job.completed_at) == (1, completed_at)


def test_a_worker_presumed_lost_cannot_write_over_the_new_owner(ctx: WorkerContext) -> None:
    job_id = submit(ctx)
    with session_scope(ctx.session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="slow-worker")
    with session_scope(ctx.session_factory) as session:
        requeue(
            session=session,
            job=session.get(Job, job_id),
            reason="heartbeat missed",
            attempt_outcome=AttemptOutcome.LOST,
        )
    with session_scope(ctx.session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="new-worker")

    with pytest.raises(JobCancelled), session_scope(ctx.session_factory) as session:
        record_progress(
            session=session,
            job_id=job_id,
            worker_id="slow-worker",
            stage="denoising",
            step=3,
            total_steps=4,
            progress=50,
        )
    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.worker_id, job.current_step, job.attempts) == ("new-worker", 0, 2)


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_percent_moves_forward_through_the_stages() -> None:
    points = [
        progress_percent(Stage.TEXT_ENCODING),
        *(progress_percent(Stage.DENOISING, step, 10) for step in range(11)),
        progress_percent(Stage.DECODING),
        progress_percent(Stage.ENCODING),
        progress_percent(Stage.UPLOADING),
    ]
    assert points == sorted(points) and points[0] == 0 and points[-1] < 100


def test_progress_webhooks_are_written_only_when_asked_and_at_most_once_a_second(ctx: WorkerContext) -> None:
    import dataclasses
    from types import SimpleNamespace

    from sqlalchemy import select

    from jobs.models import WebhookDelivery
    from jobs.webhooks.endpoints import create_endpoint
    from worker.progress import ProgressReporter

    every_step = dataclasses.replace(ctx, settings=ctx.settings.model_copy(update={"progress_write_interval_s": 0.0}))
    with session_scope(ctx.session_factory) as session:
        owner = create_key(session=session, name="progress-hooks").record
        create_endpoint(
            session=session,
            owner=owner,
            url="http://127.0.0.1:9/hooks",
            events=["video.progress"],
            description="",
            allowed_hosts=frozenset({"127.0.0.1:*"}),
        )
        watched, _ = create_job(session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan"))
    unwatched = submit(ctx)  # another client's job: nobody asked for its progress
    for job_id in (watched.id, unwatched):
        with session_scope(ctx.session_factory) as session:
            claim_job(session=session, job_id=job_id, worker_id=ctx.worker_id)
        clock = FakeClock()
        reporter = ProgressReporter(every_step, job_id, total_steps=30, clock=clock)
        reporter.on_stage("denoising")
        for step in range(1, 31):  # 30 steps of 0.06 s (1.8 s), each written to the row
            clock.now += 0.06
            reporter.on_step(SimpleNamespace(step=step, elapsed_s=clock.now))

    with session_scope(ctx.session_factory) as session:
        rows = list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id.in_([watched.id, unwatched]))
                .order_by(WebhookDelivery.created_at)
            )
        )
    assert {(r.job_id, r.event_type) for r in rows} == {(watched.id, "video.progress")}
    assert len(rows) == 2  # 30 writes over 1.8 s of the reporter's clock: at t=0 and t=1.02, at most one a second
