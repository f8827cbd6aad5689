"""Celery task adapters: take an id, call one domain function, nothing else.

Module-level tasks with explicit names (`jobs.broker.RENDER_TASK`, `WEBHOOK_TASK`): the API
publishes by name, and `shared_task` binds them to whichever app the process builds
(`worker.celery_app`).
"""

from __future__ import annotations

from celery import shared_task
from celery.exceptions import Reject

from jobs.broker import RENDER_TASK, WEBHOOK_TASK
from jobs.errors import DependencyUnavailable
from jobs.webhooks.delivery import deliver
from worker.context import get_context
from worker.render import render_job


@shared_task(name=RENDER_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def render(job_id: str) -> str:
    try:
        return render_job(job_id, ctx=get_context()).value
    except DependencyUnavailable as exc:
        # The job could not even be claimed (the database is down): give the message back rather
        # than acknowledge it. (The sweeper would publish it again anyway; this is quicker.)
        raise Reject(str(exc), requeue=True) from exc


# No Celery retries: the schedule lives in the delivery row, and the sweeper publishes due attempts.
@shared_task(name=WEBHOOK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    ctx = get_context()
    return deliver(
        delivery_id,
        session_factory=ctx.session_factory,
        settings=ctx.settings,
        storage=ctx.storage,
        slots=ctx.webhook_slots,
    ).value
