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


def test_a_relay_batch_goes_out_in_one_pipeline_in_order(redis_url: str) -> None:
    """`publish_all` on the Redis bus: every job's stream gets its own events, in order, from one
    pipelined round trip; a bus without `publish_many` is published to one by one."""
    from jobs.events import ProgressEvent, RedisEventBus, publish_all

    def status(job_id: str, seq: int) -> ProgressEvent:
        return ProgressEvent.at(job_id=job_id, stage="denoising", step=seq, total_steps=10)

    events = [(f"video_b{n % 2}", status(f"video_b{n % 2}", n)) for n in range(6)]

    async def scenario() -> list[list[int]]:
        hub = RedisHub(redis_url)
        subs = [await hub.subscribe("video_b0"), await hub.subscribe("video_b1")]
        publish_all(RedisEventBus(redis.Redis.from_url(redis_url)), events)
        got: list[list[int]] = []
        for sub in subs:
            seqs = []
            for _ in range(3):
                message = await sub.get_message(timeout=5.0)
                assert message is not None
                seqs.append(json.loads(message["data"])["step"])
            got.append(seqs)
            await sub.aclose()
        await hub.client.aclose()
        return got

    assert asyncio.run(scenario()) == [[0, 2, 4], [1, 3, 5]]

    class OneByOne:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def publish(self, job_id: str, event: ProgressEvent) -> None:
            self.seen.append(event.step)

    bus = OneByOne()
    publish_all(bus, events)  # type: ignore[arg-type]
    assert bus.seen == [0, 1, 2, 3, 4, 5]
