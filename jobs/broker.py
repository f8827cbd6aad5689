"""The Celery application: broker configuration shared by the API (which publishes) and the worker
(which consumes and registers the task bodies). Only names live here, never task logic."""

from __future__ import annotations

import redis
from celery import Celery

from jobs.settings import Settings

RENDER_TASK = "vidq.render"
WEBHOOK_TASK = "vidq.deliver_webhook"
WEBHOOK_QUEUE = "webhooks"  # CPU work: never a GPU queue, so a long render cannot hold a webhook back
# Bounded Redis calls: a broker that does not answer is an error in seconds, never a hung request.
REDIS_CONNECT_TIMEOUT_S = 2.0
REDIS_SOCKET_TIMEOUT_S = 5.0


def redis_client(url: str) -> redis.Redis:
    """A Redis client for short commands (status records, markers, pub/sub publishes)."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S, socket_timeout=REDIS_SOCKET_TIMEOUT_S
    )


def make_celery(settings: Settings) -> Celery:
    app = Celery("vidq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,  # a message leaves the queue only after the job is done
        task_reject_on_worker_lost=True,  # a killed worker puts its message back
        worker_prefetch_multiplier=1,  # a GPU worker holds one job at a time, not a backlog
        task_ignore_result=True,  # results live in Postgres, not in a result backend
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_default_queue="default",
    )
    return app
