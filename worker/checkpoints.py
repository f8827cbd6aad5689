"""The worker's denoising checkpointer: the engine's checkpoint hook backed by object storage.

A render saves the denoising state every ``VIDQ_CHECKPOINT_EVERY_STEPS`` steps or
``VIDQ_CHECKPOINT_EVERY_S`` seconds (whichever comes first) to ``checkpoints/<job id>/denoising.pt``;
the next attempt of the job, on any worker, starts from there and the job records the step
(``resumed_from_step``). Checkpointing is best effort: a store that is down costs the checkpoint,
never the render. Checkpoints are removed when the job finishes or is deleted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from jobs.db import retry_db, session_scope
from jobs.execution import record_resume
from jobs.settings import Settings
from jobs.storage import Storage, checkpoint_key

if TYPE_CHECKING:
    from engine.checkpoint import DenoisingCheckpoint
    from worker.context import WorkerContext

log = logging.getLogger(__name__)


def checkpoints_enabled(settings: Settings) -> bool:
    # A rank group's other ranks would have to restore in lockstep: single-GPU workers only.
    return settings.worker_gpus == 1 and (settings.checkpoint_every_steps > 0 or settings.checkpoint_every_s > 0)


class StorageCheckpointer:
    """Implements ``engine.checkpoint.Checkpointer`` for one job on one worker. ``clock`` is injected
    so the time trigger can be tested without waiting."""

    def __init__(self, ctx: WorkerContext, job_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self.key = checkpoint_key(job_id)
        self.every_steps = ctx.settings.checkpoint_every_steps
        self.every_s = ctx.settings.checkpoint_every_s
        self._clock = clock
        self._last_saved_at = clock()
        self._last_saved_step = 0

    @property
    def storage(self) -> Storage:
        return self.ctx.storage

    def load(self) -> DenoisingCheckpoint | None:
        from engine.checkpoint import DenoisingCheckpoint

        try:
            data = self.storage.get_bytes(self.key)
            return DenoisingCheckpoint.from_bytes(data) if data is not None else None
        except Exception as exc:  # unreadable or unreachable: start from step 0 rather than fail
            log.warning("job %s: could not read its checkpoint, starting from the beginning: %s", self.job_id, exc)
            return None

    def resumed(self, checkpoint: DenoisingCheckpoint) -> None:
        log.info("job %s: resuming from the checkpoint after step %d", self.job_id, checkpoint.step)
        self._last_saved_step = checkpoint.step

        def record() -> None:
            with session_scope(self.ctx.session_factory) as session:
                record_resume(session=session, job_id=self.job_id, worker_id=self.ctx.worker_id, step=checkpoint.step)

        retry_db(record, deadline_s=self.ctx.settings.db_retry_s, what=f"resume of {self.job_id}")

    def due(self, step: int, total: int) -> bool:
        by_steps = self.every_steps > 0 and step - self._last_saved_step >= self.every_steps
        by_time = self.every_s > 0 and self._clock() - self._last_saved_at >= self.every_s
        return by_steps or by_time

    def save(self, checkpoint: DenoisingCheckpoint) -> None:
        try:
            self.storage.put_bytes(self.key, checkpoint.to_bytes(), "application/octet-stream")
        except Exception as exc:
            log.warning("job %s: checkpoint after step %d not saved: %s", self.job_id, checkpoint.step, exc)
            return
        self._last_saved_at, self._last_saved_step = self._clock(), checkpoint.step


def delete_checkpoint(storage: Storage, job_id: str) -> None:
    try:
        storage.delete(checkpoint_key(job_id))
    except Exception as exc:  # an orphan checkpoint is only wasted space
        log.warning("job %s: could not delete its checkpoint: %s", job_id, exc)
