"""The live event stream without Redis (embedded mode): it polls the row and still ends on time."""

from __future__ import annotations

import asyncio
import threading
import time

from jobs.crud import create_job
from jobs.db import session_scope
from jobs.execution import claim_job, complete_owned, record_progress
from jobs.live import LiveEvent, job_events
from jobs.validation import JobRequest


def test_without_redis_the_stream_polls_the_row_until_the_job_ends(session_factory, owner) -> None:
    with session_scope(session_factory) as session:
        job, _ = create_job(
            session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan", num_inference_steps=3)
        )
    first_event = threading.Event()

    def render() -> None:  # what a worker does, slow enough for each write to be seen
        first_event.wait(10)
        with session_scope(session_factory) as session:
            claim_job(session=session, job_id=job.id, worker_id="w")
        for step in (1, 2, 3):
            time.sleep(0.15)
            with session_scope(session_factory) as session:
                record_progress(
                    session=session,
                    job_id=job.id,
                    worker_id="w",
                    stage="denoising",
                    step=step,
                    total_steps=3,
                    progress=5 + 28 * step,
                    eta_seconds=0.15 * (3 - step),
                )
        time.sleep(0.15)
        with session_scope(session_factory) as session:
            complete_owned(
                session=session,
                job_id=job.id,
                worker_id="w",
                video_key="v",
                thumbnail_key="t",
                stage_timings={"denoising": 0.45},
                result_ttl_s=3600,
            )

    async def collect() -> list[LiveEvent]:
        seen: list[LiveEvent] = []
        stream = job_events(
            job.id,
            owner_id=owner.id,
            session_factory=session_factory,
            redis_url="",
            heartbeat_s=5,
            poll_interval_s=0.02,
        )
        async for item in stream:
            if item is not None:
                seen.append(item)
                first_event.set()
        return seen

    worker = threading.Thread(target=render)
    worker.start()
    events = asyncio.run(asyncio.wait_for(collect(), timeout=30))
    worker.join()

    assert events[0].event == "state" and events[0].data["status"] == "queued"
    assert [e.data["step"] for e in events if e.event == "progress"] == [1, 2, 3]
    assert [e.data["status"] for e in events if e.event == "status"] == ["in_progress", "completed"]
    assert events[-1].data["stage_timings"] == {"denoising": 0.45}  # the final event is the whole job
    assert all("status" in e.data for e in events)
