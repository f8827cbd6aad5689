"""The live event stream without Redis: embedded mode follows the in-process bus; when Redis cannot be
reached the stream polls the row and still ends on time."""

from __future__ import annotations

import asyncio
import threading

from jobs.crud import create_job
from jobs.db import session_scope
from jobs.events import LOCAL_EVENTS, ProgressEvent
from jobs.execution import claim_job, complete_owned, record_progress
from jobs.live import LiveEvent, job_events
from jobs.relay import fan_out
from jobs.validation import JobRequest


def test_when_redis_cannot_be_reached_the_stream_polls_the_row_until_the_job_ends(session_factory, owner) -> None:
    with session_scope(session_factory) as session:
        job, _ = create_job(
            session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan", num_inference_steps=3)
        )
    seen = threading.Semaphore(0)  # released once per event the stream yields

    def render() -> None:  # what a worker does, one write per event the stream has shown (no sleeps)
        seen.acquire(timeout=10)  # the current state
        with session_scope(session_factory) as session:
            claim_job(session=session, job_id=job.id, worker_id="w")
        seen.acquire(timeout=10)  # in_progress
        for step in (1, 2, 3):
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
            seen.acquire(timeout=10)
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
        events: list[LiveEvent] = []
        stream = job_events(
            job.id,
            owner_id=owner.id,
            session_factory=session_factory,
            redis_url="redis://127.0.0.1:1/0",  # nothing listens there
            heartbeat_s=5,
            poll_interval_s=0.02,
        )
        async for item in stream:
            if item is not None:
                events.append(item)
                seen.release()
        return events

    worker = threading.Thread(target=render)
    worker.start()
    events = asyncio.run(asyncio.wait_for(collect(), timeout=30))
    worker.join()

    assert events[0].event == "state" and events[0].data["status"] == "queued"
    assert [e.data["step"] for e in events if e.event == "progress"] == [1, 2, 3]
    assert [e.data["status"] for e in events if e.event == "status"] == ["in_progress", "completed"]
    assert events[-1].data["stage_timings"] == {"denoising": 0.45}  # the final event is the whole job
    assert all("status" in e.data for e in events)


def test_embedded_stream_follows_every_stage_and_step_on_the_in_process_bus(session_factory, owner) -> None:
    with session_scope(session_factory) as session:
        job, _ = create_job(
            session=session, owner=owner, request=JobRequest(prompt="a cat", model="tiny-wan", num_inference_steps=3)
        )
    subscribed = threading.Event()
    last_step_seen = threading.Event()
    stages = ["text_encoding", "denoising", "denoising", "denoising", "decoding", "encoding", "uploading"]

    def relay() -> None:  # what the relay does after each commit (draining the module's other events too)
        while fan_out(session_factory=session_factory, bus=LOCAL_EVENTS):
            pass

    def render() -> None:  # the worker's publishes, with no row write between them: only the bus carries them
        subscribed.wait(10)
        with session_scope(session_factory) as session:
            claim_job(session=session, job_id=job.id, worker_id="w")
        relay()  # the started event, live
        for index, stage in enumerate(stages):
            step = max(0, min(index, 3)) if stage == "denoising" else (3 if index > 3 else 0)
            LOCAL_EVENTS.publish(job.id, ProgressEvent.at(job_id=job.id, stage=stage, step=step, total_steps=3))
        # The stream ends at the final status: steps it has not read by then are (rightly) not sent.
        last_step_seen.wait(10)
        with session_scope(session_factory) as session:
            complete_owned(
                session=session,
                job_id=job.id,
                worker_id="w",
                video_key="v",
                thumbnail_key="t",
                stage_timings={"denoising": 0.1},
                result_ttl_s=3600,
            )
        relay()

    async def collect() -> list[LiveEvent]:
        seen: list[LiveEvent] = []
        stream = job_events(job.id, owner_id=owner.id, session_factory=session_factory, redis_url="", heartbeat_s=60)
        async for item in stream:
            if item is not None:
                seen.append(item)
                subscribed.set()  # the subscription opens before the first event is read
                if item.event == "progress" and item.data["stage"] == stages[-1]:
                    last_step_seen.set()
        return seen

    worker = threading.Thread(target=render)
    worker.start()
    events = asyncio.run(asyncio.wait_for(collect(), timeout=30))
    worker.join()

    progress = [(e.data["stage"], e.data["step"]) for e in events if e.event == "progress"]
    assert progress == [
        ("text_encoding", 0),
        ("denoising", 1),
        ("denoising", 2),
        ("denoising", 3),
        ("decoding", 3),
        ("encoding", 3),
        ("uploading", 3),
    ]
    assert [e.data["status"] for e in events if e.event == "status"] == ["in_progress", "completed"]
    assert events[-1].data["stage_timings"] == {"denoising": 0.1}
