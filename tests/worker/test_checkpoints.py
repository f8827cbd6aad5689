"""Resume from denoising checkpoints in the worker: a render that dies mid-way and is requeued
continues from its last checkpoint and stores the same video as an uninterrupted render."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jobs.attempts import AttemptOutcome
from jobs.crud import create_job
from jobs.db import session_scope
from jobs.keys import create_key
from jobs.lifecycle import requeue
from jobs.models import Job
from jobs.settings import Settings
from jobs.storage import checkpoint_key
from jobs.validation import JobRequest
from worker.checkpoints import StorageCheckpointer
from worker.context import WorkerContext, build_context
from worker.progress import ProgressReporter
from worker.render import RenderOutcome, render_job


class WorkerDied(BaseException):
    """Not an Exception: like SIGKILL, nothing in the render gets to handle it."""


@pytest.fixture(scope="module")
def ctx(database_url: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    settings = Settings(
        database_url=database_url,
        models_dir=models_dir,
        data_dir=tmp_path_factory.mktemp("data"),
        device="cpu",
        checkpoint_every_steps=2,
        checkpoint_every_s=0,
        progress_write_interval_s=0,
    )
    return build_context(settings)


def submit(ctx: WorkerContext) -> str:
    with session_scope(ctx.session_factory) as session:
        owner = create_key(session=session, name="checkpoint-test").record
        request = JobRequest(prompt="a lighthouse in a storm", model="tiny-wan", num_inference_steps=7, seed=11)
        job, _ = create_job(session=session, owner=owner, request=request)
        return job.id


def video_bytes(ctx: WorkerContext, job_id: str) -> bytes:
    with session_scope(ctx.session_factory) as session:
        key = session.get(Job, job_id).video_key
    data = ctx.storage.get_bytes(key)
    assert data is not None
    return data


def test_a_requeued_job_resumes_from_its_checkpoint_and_renders_the_same_video(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = submit(ctx)
    assert render_job(reference, ctx=ctx) is RenderOutcome.COMPLETED
    assert ctx.storage.get_bytes(checkpoint_key(reference)) is None  # removed once the job completed

    job_id = submit(ctx)
    original_on_step = ProgressReporter.on_step

    def die_after_step_five(self: ProgressReporter, info: object) -> None:
        original_on_step(self, info)
        if self.step == 5:
            raise WorkerDied

    monkeypatch.setattr(ProgressReporter, "on_step", die_after_step_five)
    with pytest.raises(WorkerDied):
        render_job(job_id, ctx=ctx)
    monkeypatch.undo()
    assert ctx.storage.get_bytes(checkpoint_key(job_id)) is not None  # saved after steps 2 and 4

    with session_scope(ctx.session_factory) as session:  # what the sweeper does for a lost worker
        requeue(
            session=session,
            job=session.get(Job, job_id),
            reason="worker stopped responding",
            attempt_outcome=AttemptOutcome.LOST,
        )
    assert render_job(job_id, ctx=ctx) is RenderOutcome.COMPLETED

    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.resumed_from_step) == ("completed", 2, 4)
    assert video_bytes(ctx, job_id) == video_bytes(ctx, reference)
    assert ctx.storage.get_bytes(checkpoint_key(job_id)) is None


def test_checkpoints_are_due_every_n_steps_or_every_s_seconds(ctx: WorkerContext) -> None:
    import torch

    from engine.checkpoint import DenoisingCheckpoint

    def saved_at(checkpointer: StorageCheckpointer, steps: range, clock: list[float]) -> list[int]:
        saved = []
        for step in steps:
            clock[0] += 10.0  # each step takes 10 s
            if checkpointer.due(step, steps.stop):
                checkpointer.save(DenoisingCheckpoint(step, steps.stop, "f", torch.zeros(1), {}))
                saved.append(step)
        return saved

    clock = [0.0]
    every_two_steps = StorageCheckpointer(ctx, "video_steps", clock=lambda: clock[0])
    assert saved_at(every_two_steps, range(1, 10), clock) == [2, 4, 6, 8]

    by_time = dataclasses.replace(
        ctx, settings=ctx.settings.model_copy(update={"checkpoint_every_steps": 0, "checkpoint_every_s": 25.0})
    )
    clock = [0.0]
    every_25_s = StorageCheckpointer(by_time, "video_time", clock=lambda: clock[0])
    assert saved_at(every_25_s, range(1, 10), clock) == [3, 6, 9]
    assert ctx.storage.get_bytes(checkpoint_key("video_time")) is not None
