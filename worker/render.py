"""Rendering one job end to end: claim, generate, encode, upload, complete.

The Celery task is a thin adapter over :func:`render_job`, which can be called directly (tests do).
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Any

from jobs.db import retry_db, session_scope
from jobs.errors import JobCancelled
from jobs.execution import claim_job, complete_owned, fail_owned, retry_owned
from jobs.logs import job_context
from jobs.models import Job
from jobs.states import JobStatus
from jobs.storage import result_keys
from jobs.transient import transient_code
from spec.errors import CodedError
from spec.stages import Stage
from worker.checkpoints import StorageCheckpointer, checkpoints_enabled, delete_checkpoint
from worker.context import WorkerContext
from worker.heartbeat import JobHeartbeat
from worker.progress import ProgressReporter

log = logging.getLogger(__name__)


class RenderOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not queued any more: a duplicate or stale message
    RETRYING = "retrying"  # a transient fault ended the attempt; the job is requeued with back-off


def error_code_for(exc: BaseException) -> str:
    """A failed job's ``error.code``: the code the error carries (`spec.errors.CodedError`: the
    engine's, the spec's, the worker's), else ``render_error``; the message carries the details."""
    if isinstance(exc, CodedError):
        return exc.code
    if isinstance(exc, MemoryError):  # host memory
        return "out_of_memory"
    return "render_error"


def render_job(job_id: str, *, ctx: WorkerContext) -> RenderOutcome:
    """Run one job; logs inside carry its id, and the worker's status shows it as the current job."""
    with job_context(job_id):
        ctx.activity.begin(job_id)
        try:
            outcome = _render(job_id, ctx)
        finally:
            ctx.activity.end()
    if outcome is not RenderOutcome.SKIPPED:
        ctx.activity.jobs_done += 1
    return outcome


def _claim(job_id: str, ctx: WorkerContext):  # type: ignore[no-untyped-def]
    with session_scope(ctx.session_factory) as session:
        return claim_job(session=session, job_id=job_id, worker_id=ctx.worker_id)


def _render(job_id: str, ctx: WorkerContext) -> RenderOutcome:
    # A database outage longer than the retry deadline raises DependencyUnavailable out of here, before
    # anything was claimed: the task gives the message back instead of acknowledging it.
    job = retry_db(lambda: _claim(job_id, ctx), deadline_s=ctx.settings.db_retry_s, what=f"claim of {job_id}")
    if job is None:
        log.info("job %s is not queued any more; message dropped", job_id)
        return RenderOutcome.SKIPPED
    log.info("job %s: attempt %d on %s", job_id, job.attempts, ctx.worker_id)

    uploaded: list[str] = []
    outcome = _run_claimed(job, ctx, uploaded)
    if outcome not in (RenderOutcome.SKIPPED, RenderOutcome.RETRYING) and checkpoints_enabled(ctx.settings):
        delete_checkpoint(ctx.storage, job_id)  # the job is over: its checkpoint is of no more use
    return outcome


def _run_claimed(job, ctx: WorkerContext, uploaded: list[str]) -> RenderOutcome:  # type: ignore[no-untyped-def]
    job_id = job.id
    with JobHeartbeat(ctx, job_id):
        try:
            video_key, thumbnail_key, timings, memory, acceleration = _generate_and_upload(job, ctx, uploaded)

            def complete() -> None:
                with session_scope(ctx.session_factory) as session:
                    complete_owned(
                        session=session,
                        job_id=job_id,
                        worker_id=ctx.worker_id,
                        video_key=video_key,
                        thumbnail_key=thumbnail_key,
                        stage_timings=timings,
                        result_ttl_s=ctx.settings.result_ttl_s,
                        memory=memory,
                        acceleration_result=acceleration,
                    )

            retry_db(complete, deadline_s=ctx.settings.db_retry_s, what=f"completion of {job_id}")
        except JobCancelled as exc:
            completed = _completed_with(ctx, job_id, uploaded)
            if completed and uploaded:  # our commit went through; only its answer was lost
                return RenderOutcome.COMPLETED
            log.info("job %s stopped: %s", job_id, exc)
            if not completed:  # cancelled or deleted while uploading: leave nothing behind
                _remove(ctx, uploaded)
            return RenderOutcome.CANCELLED
        except Exception as exc:
            _remove(ctx, uploaded)
            transient = transient_code(exc)
            if transient is not None:
                return _retry_later(ctx, job_id, transient, exc)
            log.exception("job %s failed", job_id)
            code, message = error_code_for(exc), f"{type(exc).__name__}: {exc}"
            with session_scope(ctx.session_factory) as session:
                recorded = fail_owned(
                    session=session,
                    job_id=job_id,
                    worker_id=ctx.worker_id,
                    code=code,
                    message=message,
                    trace=traceback.format_exc(),
                )
            if recorded is None:
                return RenderOutcome.CANCELLED
            return RenderOutcome.FAILED
    return RenderOutcome.COMPLETED


def _retry_later(ctx: WorkerContext, job_id: str, code: str, exc: Exception) -> RenderOutcome:
    """Requeue the job with back-off after a transient fault (or fail it if that was its last attempt).

    If even this cannot be written (the database is down for longer than the retry deadline), the job
    stays in_progress under this worker, whose status record no longer names it: the sweeper takes it
    back within a few heartbeats once the database answers."""
    log.warning("job %s: attempt ended by %s: %s", job_id, code, exc)
    settings = ctx.settings
    message, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()

    def record():  # type: ignore[no-untyped-def]
        with session_scope(ctx.session_factory) as session:
            job = retry_owned(
                session=session,
                job_id=job_id,
                worker_id=ctx.worker_id,
                code=code,
                message=message,
                max_attempts=settings.max_attempts,
                backoff_s=settings.retry_backoff_s,
                backoff_max_s=settings.retry_backoff_max_s,
                trace=trace,
            )
            return None if job is None else job.status

    status = retry_db(record, deadline_s=settings.db_retry_s, what=f"retry of {job_id}")
    if status is None:
        return RenderOutcome.CANCELLED
    return RenderOutcome.FAILED if status == JobStatus.FAILED.value else RenderOutcome.RETRYING


def _completed_with(ctx: WorkerContext, job_id: str, uploaded: list[str]) -> bool:
    """Whether the job is completed with the objects this attempt uploaded (same keys on every attempt):
    then they are the job's result and must stay. Either this attempt's completion went through and
    only its answer was lost, or another worker completed the job after this one was presumed lost."""
    if not uploaded:
        return False
    with session_scope(ctx.session_factory) as session:
        job = session.get(Job, job_id)
        return job is not None and job.status == JobStatus.COMPLETED.value and job.video_key == uploaded[0]


def _generate_and_upload(  # type: ignore[no-untyped-def]
    job, ctx: WorkerContext, uploaded: list[str]
) -> tuple[str, str, dict[str, float], dict[str, Any], dict[str, Any] | None]:
    from engine import GenerationRequest
    from engine.io.video import encode_mp4, write_thumbnail
    from jobs.inputs import load_input_reference

    reporter = ProgressReporter(ctx, job.id, job.num_inference_steps, model=job.model)
    reporter.on_stage(Stage.TEXT_ENCODING.value)
    load_started = time.perf_counter()
    engine = ctx.engines.get(job.model)
    load_s = time.perf_counter() - load_started

    request = GenerationRequest(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        width=job.width,
        height=job.height,
        num_frames=job.num_frames,
        num_inference_steps=job.num_inference_steps,
        guidance_scale=job.guidance_scale,
        seed=job.seed,
        fps=job.fps,
        loras=ctx.lora_files.refs(job.loras),
        flow_shift=job.flow_shift,
        acceleration=job.acceleration,  # resolved options, or None: the lossless path
        image=load_input_reference(ctx.storage, job.input_reference_key) if job.input_reference_key else None,
    )
    resume: dict[str, Any] = {}
    if checkpoints_enabled(ctx.settings):
        resume["checkpointer"] = StorageCheckpointer(ctx, job.id)
    result = engine.generate(request, on_step=reporter.on_step, on_stage=reporter.on_stage, **resume)
    timings = {name: round(float(s), 4) for name, s in result.stage_timings_s.items()}
    if load_s > 0.01:
        timings["model_load"] = round(load_s, 4)

    video_key, thumbnail_key = result_keys(job.id)
    with tempfile.TemporaryDirectory(prefix="vidq-") as tmp:
        reporter.on_stage(Stage.ENCODING.value)
        started = time.perf_counter()
        video_path, thumb_path = Path(tmp) / "video.mp4", Path(tmp) / "thumbnail.jpg"
        encode_mp4(result.frames, video_path, fps=job.fps)
        write_thumbnail(result.frames, thumb_path)
        timings["encoding"] = round(time.perf_counter() - started, 4)

        reporter.on_stage(Stage.UPLOADING.value)
        started = time.perf_counter()
        ctx.storage.put_file(video_key, video_path, "video/mp4")
        uploaded.append(video_key)
        ctx.storage.put_file(thumbnail_key, thumb_path, "image/jpeg")
        uploaded.append(thumbnail_key)
        timings["uploading"] = round(time.perf_counter() - started, 4)
    return video_key, thumbnail_key, timings, memory_record(result), acceleration_record(result)


def acceleration_record(result) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """What the job keeps of the fast modes: steps computed and skipped, precision (the options
    themselves are already on the job)."""
    report = getattr(result, "acceleration", None)
    if report is None:
        return None
    return {key: value for key, value in report.items() if key != "options"}


def memory_record(result) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """What the job keeps of the render's memory: the engine's plan and each stage's peak."""
    plan = getattr(result, "memory_plan", None)
    return {
        "plan": plan.to_dict() if plan is not None else None,
        "stage_peak_bytes": dict(getattr(result, "stage_peak_memory_bytes", None) or {}),
    }


def _remove(ctx: WorkerContext, keys: list[str]) -> None:
    for key in keys:
        try:
            ctx.storage.delete(key)
        except Exception as exc:
            log.warning("could not remove %s: %s", key, exc)
