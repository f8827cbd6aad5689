"""Messages a worker took and never claimed: a worker killed between delivery and claim, and a
publish racing the only worker's death. In both the job is claimed or published again."""

from __future__ import annotations

import httpx
import redis
from sqlalchemy import select

from jobs.db import session_scope
from jobs.models import Job
from tests.faults.conftest import Stack, assert_completed_exactly_once, submit, wait_for_log, wait_until_published


def test_a_worker_killed_between_delivery_and_claim_loses_no_job(
    stack: Stack, client: httpx.Client, start_worker
) -> None:
    [job_id] = submit(client, 1)
    wait_until_published(stack, [job_id])
    # Hold the job's row lock: the worker receives the message and then waits in its claim.
    with session_scope(stack.session_factory) as session:
        session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        worker = start_worker()
        wait_for_log(worker, "received")
        assert redis.Redis.from_url(stack.redis.url).llen("gpu.wan") == 0  # the message is with the worker
        worker.kill()  # unacknowledged, invisible to others for the visibility timeout (hours)
    start_worker()
    [job] = assert_completed_exactly_once(stack, [job_id]).values()
    assert job.attempts == 1  # the killed worker never claimed it


def test_a_publish_racing_the_only_workers_death_loses_no_job(stack: Stack, client: httpx.Client, start_worker) -> None:
    start_worker().kill()
    ids = submit(client, 3)  # published as the only worker dies
    wait_until_published(stack, ids)
    # A dying worker's pending BRPOP can take a message and vanish with it; do what it does.
    broker = redis.Redis.from_url(stack.redis.url)
    taken = [broker.rpop("gpu.wan") for _ in ids]
    assert all(taken)
    start_worker()
    assert_completed_exactly_once(stack, ids)
