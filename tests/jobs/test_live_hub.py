"""One Redis pub/sub connection per API process for all event streams (issue 17), on real Redis."""

from __future__ import annotations

import asyncio
import json

import redis

from jobs.events import job_channel
from jobs.live_hub import RedisHub


def pubsub_connections(client: redis.Redis) -> int:
    return len(client.client_list(_type="pubsub"))


def test_many_streams_share_one_connection_and_each_gets_its_jobs_messages(redis_url: str) -> None:
    plain = redis.Redis.from_url(redis_url)
    before = pubsub_connections(plain)

    async def scenario() -> tuple[int, list[list[str]], int]:
        hub = RedisHub(redis_url)
        subs = [await hub.subscribe(f"video_{i % 2}") for i in range(20)]
        during = pubsub_connections(plain) - before
        for i in range(2):
            plain.publish(job_channel(f"video_{i}"), json.dumps({"status": f"s{i}"}))
        got = []
        for sub in subs:
            message = await sub.get_message(timeout=5.0)
            got.append([json.loads(message["data"])["status"]] if message else [])
        for sub in subs:
            await sub.aclose()
        left = len(hub.subscribers)
        await hub.client.aclose()
        return during, got, left

    during, got, left = asyncio.run(scenario())
    assert during == 1  # twenty streams, two jobs: one connection
    assert got == [[f"s{i % 2}"] for i in range(20)]
    assert left == 0  # the last stream of a job unsubscribes its channel
