"""Turns the engine's stage and step callbacks into job progress.

Every step is published on the event bus (cheap, live); the database row is written at most once
per ``progress_write_interval_s`` (plus stage changes and the last step), so a fast model does not
hammer PostgreSQL. Cancellation is checked on every step with a primary-key read, which is what
lets a cancel take effect within one step. A database outage shorter than ``VIDQ_DB_RETRY_S`` only
pauses the render at its next write; a longer one ends the attempt with ``database_unavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jobs import metrics
from jobs.db import retry_db, session_scope
from jobs.events import ProgressEvent
from jobs.execution import ensure_owned, record_progress
from jobs.webhooks.outbox import PROGRESS_EVENT_INTERVAL_S, add_progress_event, progress_subscribed
from spec.stages import Stage, progress_percent
from worker.context import WorkerContext


class ProgressReporter:
    """Reports one render's stages and steps: live events every step, throttled row writes, the ETA
    (remaining denoising steps times the mean measured step time), and ``video.progress`` webhooks
    (at most one per second, and only when a webhook target asked for them).

    ``clock`` (monotonic seconds) times the throttles and ``elapsed_s``; tests pass a fake one.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        job_id: str,
        total_steps: int,
        *,
        model: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ctx = ctx
        self.clock = clock
        self.job_id = job_id
        self.model = model
        self.total_steps = total_steps
        self._step_metric: tuple[int, float] | None = None  # (step, elapsed_s) of the last step observed
        self.stage = Stage.TEXT_ENCODING
        self.step = 0
        self.eta_seconds: float | None = None
        self._last_write = 0.0
        self._last_progress_event = float("-inf")
        self._progress_subscribed: bool | None = None  # asked once, on the first write
        self._started = clock()
        self._first_step: int | None = None  # the first step this attempt computed (> 1 after a resume)

    def _write(self, *, force: bool) -> None:
        retry_db(
            lambda: self._write_once(force=force),
            deadline_s=self.ctx.settings.db_retry_s,
            what=f"progress of {self.job_id}",
        )

    def _write_once(self, *, force: bool) -> None:
        now = self.clock()
        with session_scope(self.ctx.session_factory) as session:
            if force or now - self._last_write >= self.ctx.settings.progress_write_interval_s:
                record_progress(
                    session=session,
                    job_id=self.job_id,
                    worker_id=self.ctx.worker_id,
                    stage=self.stage.value,
                    step=self.step,
                    total_steps=self.total_steps,
                    progress=progress_percent(self.stage, self.step, self.total_steps),
                    eta_seconds=self.eta_seconds,
                )
                self._last_write = now
                if self._progress_subscribed is None:
                    self._progress_subscribed = progress_subscribed(session=session, job_id=self.job_id)
                if self._progress_subscribed and now - self._last_progress_event >= PROGRESS_EVENT_INTERVAL_S:
                    add_progress_event(session=session, job_id=self.job_id)  # same transaction as the row
                    self._last_progress_event = now
            else:
                ensure_owned(session=session, job_id=self.job_id, worker_id=self.ctx.worker_id)

    def _publish(self, step_elapsed_s: float | None = None) -> None:
        self.ctx.events.publish(
            self.job_id,
            ProgressEvent.at(
                job_id=self.job_id,
                stage=self.stage.value,
                step=self.step,
                total_steps=self.total_steps,
                eta_seconds=self.eta_seconds,
                elapsed_s=round(self.clock() - self._started, 3),
                step_elapsed_s=step_elapsed_s,
            ),
        )

    def on_stage(self, name: str) -> None:
        """Called by the engine (and the worker, for uploading) when a stage begins."""
        self.stage = Stage(name)
        self.ctx.activity.update(stage=self.stage.value, step=self.step, total_steps=self.total_steps)
        if self.stage is not Stage.DENOISING:
            self.eta_seconds = None  # only denoising steps are measured
        self._write(force=True)
        self._publish()

    def _observe_step(self, elapsed: float) -> None:
        """One observation per step (steps reported together share their time evenly)."""
        # `elapsed` starts with this attempt's first step (after a resume, not with step 1).
        last_step, last_elapsed = self._step_metric or (self.step - 1, 0.0)
        if self.step > last_step and elapsed >= last_elapsed:
            per_step = (elapsed - last_elapsed) / (self.step - last_step)
            for _ in range(self.step - last_step):
                metrics.STEP_SECONDS.labels(self.model).observe(per_step)
        self._step_metric = (self.step, elapsed)

    def on_step(self, info: Any) -> None:
        """Called after each denoising step; raises JobCancelled to stop the render."""
        self.step = int(info.step)
        self.ctx.activity.update(stage=self.stage.value, step=self.step, total_steps=self.total_steps)
        elapsed = float(info.elapsed_s)  # since the denoising loop began
        if self._first_step is None:
            self._first_step = self.step
        computed = self.step - self._first_step + 1  # steps measured in `elapsed` (a resume skips some)
        if computed > 0:
            self.eta_seconds = round(elapsed / computed * (self.total_steps - self.step), 2)
        self._observe_step(elapsed)
        self._write(force=self.step == self.total_steps)
        self._publish(step_elapsed_s=round(elapsed, 3))
