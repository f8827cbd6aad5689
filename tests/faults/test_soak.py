"""A soak: 100 small jobs while workers are killed at random and Redis restarts (losing every
message). Every accepted job completes exactly once."""

from __future__ import annotations

import random
import threading

import httpx
from sqlalchemy import func, select

from jobs.db import session_scope
from jobs.models import Job
from tests.faults.conftest import Stack, assert_completed_exactly_once, submit

JOBS = 100
# The chaos, keyed by how many jobs have completed: worker kills and one Redis restart (no persistence:
# queued and unacknowledged messages are gone).
CHAOS = {10: "kill", 25: "kill", 40: "restart redis", 55: "kill"}


def test_a_soak_with_random_worker_kills_and_a_redis_restart(stack: Stack, client: httpx.Client, start_worker) -> None:
    rng = random.Random(16)  # which worker dies is random, the same on every run
    workers = [start_worker(), start_worker()]
    ids = submit(client, JOBS)
    stop = threading.Event()
    done_events: list[str] = []

    def completed() -> int:
        try:
            with session_scope(stack.session_factory) as session:
                query = select(func.count()).where(Job.id.in_(ids), Job.status == "completed")
                return int(session.scalar(query) or 0)
        except Exception:  # the database is not what this test disturbs; retry on the next look
            return 0

    def chaos() -> None:
        for threshold, action in sorted(CHAOS.items()):
            while completed() < threshold:
                if stop.wait(0.2):
                    return
            if action == "restart redis":
                stack.redis.restart()
            else:
                victim = workers.pop(rng.randrange(len(workers)))
                victim.kill()
                workers.append(start_worker(wait=False))
            done_events.append(action)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    try:
        assert_completed_exactly_once(stack, ids, timeout_s=280)
    finally:
        stop.set()
        chaos_thread.join(timeout=30)
    assert done_events == [action for _, action in sorted(CHAOS.items())]
