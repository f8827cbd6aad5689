"""A background heartbeat for the running job, so that long stages with no steps (loading weights,
decoding a long video) still prove the worker alive, and a dead worker is noticed by the sweeper."""

from __future__ import annotations

import logging
import threading

from jobs.db import session_scope
from jobs.execution import record_heartbeat
from worker.context import WorkerContext

log = logging.getLogger(__name__)


class JobHeartbeat:
    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        self.ctx = ctx
        self.job_id = job_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.ctx.settings.heartbeat_interval_s):
            try:
                with session_scope(self.ctx.session_factory) as session:
                    if not record_heartbeat(session=session, job_id=self.job_id, worker_id=self.ctx.worker_id):
                        return  # cancelled or taken over; the render notices on its next step
            except Exception as exc:  # the database may be restarting; keep trying
                log.warning("heartbeat for %s failed: %s", self.job_id, exc)
