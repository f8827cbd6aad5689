"""Task messages written straight into a Redis broker, as Celery's ``send_task`` and kombu's Redis
transport write them, for the relay's hot path.

Under a full load of submits every job's render message is published by its API process's relay
thread. Through ``send_task`` each one cost about 155 µs of CPU (in-process measurement: routing,
option merging, ``saferepr``, signals, kombu's declare cache, serialization, envelope): a tenth of the
API process's CPU under load (py-spy), all of it holding the GIL the route threads wait for. Here
the message is the same bytes (the envelope kombu's Redis transport pushes: a Celery protocol-2
message, its body base64-encoded) built from a template Celery made once, and a batch goes out as
one pipeline of ``LPUSH``es.

The form is pinned by ``tests/jobs/test_task_messages.py``, which compares a message written here
with one ``send_task`` wrote, field by field, on the installed Celery and kombu; a real worker
consumes these messages in every end-to-end test.

Only for plain Redis brokers with kombu's default key layout (no ``global_keyprefix``); any other
broker (the embedded in-process one, a key prefix) goes through ``send_task``.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery import Celery

# What kombu's Redis transport sends for a persistent message at the default priority (0: the
# queue's own list; other priorities are lists with a suffix).
_PERSISTENT = 2
_DEFAULT_PRIORITY = 0
_NO_CALLBACKS = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class RedisTaskWriter:
    """Writes ``task_name`` messages for a list of arguments to a queue, several at a time."""

    def __init__(self, app: Celery, client: redis.Redis, task_name: str) -> None:
        self.app = app
        self.client = client
        self.task_name = task_name
        # Celery's own headers for this task, made once; each message changes only its ids and argsrepr.
        # ignore_result=None: what send_task passes when neither the call nor the task sets it.
        template = app.amqp.as_task_v2("template", task_name, args=[], ignore_result=None)
        self._headers: dict[str, Any] = template.headers

    def envelope(self, args: list[Any], queue: str) -> bytes:
        """The bytes kombu's Redis transport pushes for ``send_task(task_name, args=args, queue=queue)``."""
        task_id = str(uuid.uuid4())
        headers = copy.copy(self._headers)
        headers.update(id=task_id, root_id=task_id, argsrepr=repr(args), stamps={})
        headers["timelimit"] = list(self._headers["timelimit"])
        body = json.dumps([args, {}, _NO_CALLBACKS]).encode()
        return json.dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": headers,
                "properties": {
                    "correlation_id": task_id,
                    "reply_to": self.app.thread_oid,
                    "delivery_mode": _PERSISTENT,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": _DEFAULT_PRIORITY,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        ).encode()

    def write(self, messages: Sequence[tuple[list[Any], str]]) -> None:
        """Push ``(args, queue)`` messages in one round trip; raises what Redis raises (the caller
        keeps them as unsent: a render message is idempotent, the claim takes a job once)."""
        pipe = self.client.pipeline(transaction=False)
        for args, queue in messages:
            pipe.lpush(queue, self.envelope(args, queue))  # queue == key at the default priority
        pipe.execute()


def redis_task_writer(app: Celery, client_for: Callable[[str], redis.Redis], task_name: str) -> RedisTaskWriter | None:
    """A writer when ``app``'s broker is plain Redis with kombu's default key layout, else None.
    ``client_for(url)`` makes the Redis client (``jobs.broker.redis_client``)."""
    url = str(app.conf.broker_url or "")
    options = app.conf.broker_transport_options or {}
    if not url.startswith(("redis://", "rediss://")) or options.get("global_keyprefix"):
        return None
    return RedisTaskWriter(app, client_for(url), task_name)
