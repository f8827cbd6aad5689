"""``jobs.task_messages``: a render message written straight into Redis is the message Celery's
``send_task`` writes (same envelope, headers, properties and body; only the ids differ), and kombu's
consumer reads and acknowledges it."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import kombu
import pytest
import redis

from jobs.broker import RENDER_TASK, make_celery, redis_client
from jobs.settings import Settings
from jobs.task_messages import RedisTaskWriter, redis_task_writer

UNUSED_DB = "postgresql+psycopg://unused@127.0.0.1/unused"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def _queue() -> str:
    return f"test-wire-{uuid.uuid4().hex[:8]}"


def _decoded(raw: bytes) -> dict[str, Any]:
    envelope = json.loads(raw)
    envelope["body"] = json.loads(base64.b64decode(envelope["body"]))
    return envelope


def _without_ids(envelope: dict[str, Any]) -> dict[str, Any]:
    """The envelope with its per-message ids blanked, after checking they are the task's id."""
    headers, properties = envelope["headers"], envelope["properties"]
    task_id = headers["id"]
    assert uuid.UUID(task_id) and headers["root_id"] == properties["correlation_id"] == task_id
    assert uuid.UUID(properties["delivery_tag"])
    blank = json.loads(json.dumps(envelope))
    for field in ("id", "root_id"):
        blank["headers"][field] = "-"
    for field in ("correlation_id", "delivery_tag"):
        blank["properties"][field] = "-"
    return blank


def test_a_written_message_is_what_send_task_writes(redis_url: str, client: redis.Redis) -> None:
    app = make_celery(Settings(redis_url=redis_url, database_url=UNUSED_DB))
    by_celery, written = _queue(), _queue()
    try:
        app.send_task(RENDER_TASK, args=["video_same"], queue=by_celery)
        RedisTaskWriter(app, client, RENDER_TASK).write([(["video_same"], written)])
        [celery_raw], [written_raw] = client.lrange(by_celery, 0, -1), client.lrange(written, 0, -1)
        celery_message, written_message = _decoded(celery_raw), _decoded(written_raw)
        # Each names its own queue; everything else is equal, field by field.
        assert celery_message["properties"]["delivery_info"]["routing_key"] == by_celery
        assert written_message["properties"]["delivery_info"]["routing_key"] == written
        written_message["properties"]["delivery_info"]["routing_key"] = by_celery
        assert _without_ids(written_message) == _without_ids(celery_message)
        assert written_message["headers"]["id"] != celery_message["headers"]["id"]
    finally:
        client.delete(by_celery, written, f"_kombu.binding.{by_celery}", f"_kombu.binding_permanent.{by_celery}")


def test_each_message_has_its_own_ids_and_a_batch_keeps_its_order(redis_url: str, client: redis.Redis) -> None:
    app = make_celery(Settings(redis_url=redis_url, database_url=UNUSED_DB))
    queue = _queue()
    try:
        RedisTaskWriter(app, client, RENDER_TASK).write([([f"video_{n}"], queue) for n in range(5)])
        messages = [_decoded(raw) for raw in client.lrange(queue, 0, -1)[::-1]]  # LPUSH'ed: oldest last
        assert [m["body"][0] for m in messages] == [[f"video_{n}"] for n in range(5)]
        assert [m["headers"]["argsrepr"] for m in messages] == [repr([f"video_{n}"]) for n in range(5)]
        assert len({m["headers"]["id"] for m in messages}) == 5
        assert len({m["properties"]["delivery_tag"] for m in messages}) == 5
    finally:
        client.delete(queue)


def test_kombus_consumer_reads_and_acknowledges_a_written_message(redis_url: str, client: redis.Redis) -> None:
    """What a Celery worker's consumer does with it: decode the body, read the task headers, ack."""
    app = make_celery(Settings(redis_url=redis_url, database_url=UNUSED_DB))
    queue = _queue()
    received: list[tuple[Any, dict[str, Any]]] = []

    def on_message(body: Any, message: kombu.Message) -> None:
        received.append((body, dict(message.headers)))
        message.ack()

    try:
        RedisTaskWriter(app, client, RENDER_TASK).write([(["video_read"], queue)])
        with (
            kombu.Connection(redis_url) as connection,
            kombu.Consumer(connection, queues=[kombu.Queue(queue)], callbacks=[on_message], accept=["json"]),
        ):
            connection.drain_events(timeout=5)
        [(body, headers)] = received
        assert body[0] == ["video_read"] and body[1] == {}
        assert headers["task"] == RENDER_TASK and headers["argsrepr"] == "['video_read']"
        assert client.llen(queue) == 0 and not client.hlen("unacked")  # taken and acknowledged
    finally:
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


@pytest.mark.parametrize(
    ("broker", "options", "direct"),
    [
        ("redis://127.0.0.1:6379/0", {}, True),
        ("rediss://127.0.0.1:6380/0", {}, True),
        ("redis://127.0.0.1:6379/0", {"global_keyprefix": "vidq:"}, False),
        ("memory://", {}, False),
    ],
)
def test_only_a_plain_redis_broker_is_written_directly(broker: str, options: dict[str, str], direct: bool) -> None:
    app = make_celery(Settings(database_url=UNUSED_DB))
    app.conf.broker_url = broker
    app.conf.broker_transport_options = options
    assert (redis_task_writer(app, redis_client, RENDER_TASK) is not None) is direct
