"""Webhook deliveries against the real PostgreSQL and a real HTTP receiver on loopback: the outbox
rows a state change writes, and what each attempt does with the receiver's answer."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobs.crud import cancel_job, create_job
from jobs.db import session_scope, utcnow
from jobs.events import NullEventBus
from jobs.execution import claim_job
from jobs.models import ApiKey, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from jobs.relay import fan_out
from jobs.settings import Settings
from jobs.validation import JobRequest
from jobs.webhooks.delivery import AttemptOutcome, deliver
from jobs.webhooks.endpoints import create_endpoint, default_secret, rotate_secret
from jobs.webhooks.outbox import relay_webhooks
from tests.receiver import Answer, Receiver
from vidq.client import verify_webhook

LOOPBACK = frozenset({"127.0.0.1:*"})


@pytest.fixture(scope="module")
def hook_settings(db_settings: Settings) -> Settings:
    return db_settings.model_copy(
        update={"webhook_allowed_hosts": "127.0.0.1:*", "webhook_retry_schedule_s": [0.05, 0.05, 0.05]}
    )


def submit(session_factory: sessionmaker[Session], owner: ApiKey, **request: object) -> str:
    with session_scope(session_factory) as session:
        job, _ = create_job(
            session=session,
            owner=owner,
            request=JobRequest(prompt="a cat", model="tiny-wan", **request),  # type: ignore[arg-type]
            webhook_allowed_hosts=LOOPBACK,
        )
    relay(session_factory)
    return job.id


def relay(session_factory: sessionmaker[Session]) -> None:
    """What the relay of the process that committed a change does next (twice: it must not repeat)."""
    for _ in range(2):
        fan_out(session_factory=session_factory, bus=NullEventBus())


def deliveries(session_factory: sessionmaker[Session], job_id: str) -> list[WebhookDelivery]:
    with session_scope(session_factory) as session:
        return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)))


def attempts(session_factory: sessionmaker[Session], delivery_id: str) -> list[WebhookAttempt]:
    with session_scope(session_factory) as session:
        return list(
            session.scalars(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id).order_by(WebhookAttempt.id)
            )
        )


def deliver_until_settled(
    session_factory: sessionmaker[Session], settings: Settings, delivery_id: str, max_attempts: int = 10
) -> list[AttemptOutcome]:
    """Call the delivery function as the task would, waiting for each retry to fall due."""
    outcomes: list[AttemptOutcome] = []
    while len(outcomes) < max_attempts:
        outcome = deliver(delivery_id, session_factory=session_factory, settings=settings)
        if outcome is AttemptOutcome.SKIPPED:
            time.sleep(0.02)  # not due yet
            continue
        outcomes.append(outcome)
        if outcome is not AttemptOutcome.RETRY_SCHEDULED:
            break
    return outcomes


def add_endpoint(session_factory, owner, url: str, events: list[str] | None = None) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    with session_scope(session_factory) as session:
        created = create_endpoint(
            session=session, owner=owner, url=url, events=events, description="", allowed_hosts=LOOPBACK
        )
        return created.endpoint.id, created.secret


def test_each_committed_state_change_gets_its_deliveries_once(session_factory, owner, receiver) -> None:
    endpoint_id, _ = add_endpoint(session_factory, owner, receiver.url + "/all")
    completed_only, _ = add_endpoint(session_factory, owner, receiver.url + "/done", ["video.completed"])

    with pytest.raises(RuntimeError), session_scope(session_factory) as session:
        job, _ = create_job(
            session=session,
            owner=owner,
            request=JobRequest(prompt="a cat", model="tiny-wan"),
            webhook_allowed_hosts=LOOPBACK,
        )
        rolled_back = job.id
        raise RuntimeError("the transaction fails after the job was written")
    relay(session_factory)
    assert deliveries(session_factory, rolled_back) == []  # no job, no event: they commit or vanish together

    job_id = submit(session_factory, owner, webhook_url=receiver.url + "/job")
    queued = deliveries(session_factory, job_id)
    assert {(d.endpoint_id, d.event_type) for d in queued} == {(None, "video.queued"), (endpoint_id, "video.queued")}
    for delivery in queued:  # OpenAI's event envelope; its id is the delivery's (the webhook-id header)
        body = json.loads(delivery.payload)
        assert body["id"] == delivery.id and body["object"] == "event"
        assert body["created_at"] == int(delivery.created_at.timestamp())
        assert body["type"] == "video.queued" and body["data"]["id"] == job_id and body["data"]["status"] == "queued"

    with session_scope(session_factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w")
    with session_scope(session_factory) as session:
        cancel_job(session=session, owner=owner, job_id=job_id)
    relay(session_factory)
    events = sorted(d.event_type for d in deliveries(session_factory, job_id) if d.endpoint_id == endpoint_id)
    assert events == ["video.cancelled", "video.queued", "video.started"]  # no video.progress unless asked
    assert not [d for d in deliveries(session_factory, job_id) if d.endpoint_id == completed_only]


def test_a_receiver_that_fails_twice_then_succeeds_gets_one_success_and_three_attempts(
    session_factory, owner, hook_settings, receiver: Receiver
) -> None:
    receiver.answer(Answer(500, b"boom"), Answer(503, b"busy"), Answer(200, b"thanks"))
    job_id = submit(session_factory, owner, webhook_url=receiver.url + "/hook", webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)

    outcomes = deliver_until_settled(session_factory, hook_settings, delivery.id)
    assert outcomes == [AttemptOutcome.RETRY_SCHEDULED, AttemptOutcome.RETRY_SCHEDULED, AttemptOutcome.SUCCEEDED]
    assert deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.SKIPPED

    requests = receiver.requests
    assert len(requests) == 3 and {r.headers["webhook-id"] for r in requests} == {delivery.id}
    with session_scope(session_factory) as session:
        secret = default_secret(session=session, owner=session.get(ApiKey, owner.id))
    for request in requests:
        event = verify_webhook(secret, request.headers, request.body)
        assert event["type"] == "video.queued" and event["data"]["id"] == job_id

    log = attempts(session_factory, delivery.id)
    assert [a.status_code for a in log] == [500, 503, 200]
    assert [a.response_snippet for a in log] == [None, None, None]  # an allow-listed host's answers are not kept
    assert all(a.latency_ms is not None for a in log)
    assert log[0].next_attempt_at is not None and log[-1].next_attempt_at is None
    (settled,) = deliveries(session_factory, job_id)
    assert (settled.status, settled.attempts) == ("succeeded", 3)


def test_a_410_disables_the_endpoint_and_nothing_more_is_sent_to_it(
    session_factory, owner, hook_settings, receiver: Receiver
) -> None:
    receiver.answer(Answer(410, b"gone"))
    endpoint_id, _ = add_endpoint(session_factory, owner, receiver.url + "/gone")
    job_id = submit(session_factory, owner)
    (delivery,) = [d for d in deliveries(session_factory, job_id) if d.endpoint_id == endpoint_id]

    assert deliver_until_settled(session_factory, hook_settings, delivery.id) == [AttemptOutcome.FAILED]
    with session_scope(session_factory) as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        assert endpoint.disabled_at is not None and "410" in (endpoint.disabled_reason or "")
    later = submit(session_factory, owner)
    assert [d for d in deliveries(session_factory, later) if d.endpoint_id == endpoint_id] == []
    assert len(receiver.requests) == 1


def test_retry_after_is_honoured(session_factory, owner, hook_settings, receiver: Receiver) -> None:
    receiver.answer(Answer(429, b"slow down", {"Retry-After": "120"}))
    job_id = submit(session_factory, owner, webhook_url=receiver.url, webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)
    before = utcnow()
    assert (
        deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.RETRY_SCHEDULED
    )
    (retrying,) = deliveries(session_factory, job_id)
    assert retrying.next_attempt_at >= before + timedelta(seconds=119)  # not the schedule's 0.05 s
    assert deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.SKIPPED


def test_a_target_refused_at_delivery_is_never_contacted(session_factory, owner, hook_settings, receiver) -> None:
    job_id = submit(session_factory, owner, webhook_url=receiver.url, webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)
    # The host was allowed when the job was created; the operator has since removed it from the list.
    strict = hook_settings.model_copy(update={"webhook_allowed_hosts": ""})
    assert deliver(delivery.id, session_factory=session_factory, settings=strict) is AttemptOutcome.FAILED
    assert receiver.requests == []
    (attempt,) = attempts(session_factory, delivery.id)
    assert attempt.status_code is None and "not an allowed webhook target" in (attempt.error or "")


def test_redirects_are_failures_and_are_not_followed(session_factory, owner, hook_settings, receiver) -> None:
    receiver.answer(Answer(302, b"", {"Location": receiver.url + "/elsewhere"}))
    job_id = submit(session_factory, owner, webhook_url=receiver.url + "/hook", webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)
    assert (
        deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.RETRY_SCHEDULED
    )
    assert [r.path for r in receiver.requests] == ["/hook"]


def test_retries_stop_when_the_schedule_is_spent(session_factory, owner, hook_settings, receiver) -> None:
    receiver.default = Answer(500, b"down")
    short = hook_settings.model_copy(update={"webhook_retry_schedule_s": [0.01]})
    job_id = submit(session_factory, owner, webhook_url=receiver.url, webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)
    assert deliver_until_settled(session_factory, short, delivery.id) == [
        AttemptOutcome.RETRY_SCHEDULED,
        AttemptOutcome.FAILED,
    ]
    assert len(receiver.requests) == 2 and deliveries(session_factory, job_id)[0].status == "failed"


def test_an_endpoint_failing_for_too_long_is_disabled(session_factory, owner, hook_settings, receiver) -> None:
    receiver.default = Answer(500, b"down")
    endpoint_id, _ = add_endpoint(session_factory, owner, receiver.url)
    with session_scope(session_factory) as session:
        session.get(WebhookEndpoint, endpoint_id).failing_since = utcnow() - timedelta(days=6)
    job_id = submit(session_factory, owner)
    (delivery,) = [d for d in deliveries(session_factory, job_id) if d.endpoint_id == endpoint_id]
    assert deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.FAILED
    with session_scope(session_factory) as session:
        assert "failing since" in (session.get(WebhookEndpoint, endpoint_id).disabled_reason or "")


def test_after_a_rotation_messages_carry_both_signatures(session_factory, owner, hook_settings, receiver) -> None:
    endpoint_id, old_secret = add_endpoint(session_factory, owner, receiver.url)
    with session_scope(session_factory) as session:
        new_secret = rotate_secret(session=session, owner=owner, endpoint_id=endpoint_id).secret
    assert new_secret != old_secret
    job_id = submit(session_factory, owner)
    (delivery,) = [d for d in deliveries(session_factory, job_id) if d.endpoint_id == endpoint_id]
    assert deliver(delivery.id, session_factory=session_factory, settings=hook_settings) is AttemptOutcome.SUCCEEDED
    (request,) = receiver.requests
    assert len(request.headers["webhook-signature"].split()) == 2
    for secret in (old_secret, new_secret):
        assert verify_webhook(secret, request.headers, request.body)["type"] == "video.queued"


class RecordingWebhookPublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, int]] = []

    def publish_webhook(self, delivery_id: str, attempt: int) -> None:
        self.published.append((delivery_id, attempt))

    def webhook_in_flight(self, delivery_id: str, attempt: int) -> bool:
        return (delivery_id, attempt) in self.published


def test_the_relay_publishes_each_due_delivery_once_and_again_only_if_its_message_was_lost(
    session_factory, owner, hook_settings, receiver
) -> None:
    job_id = submit(session_factory, owner, webhook_url=receiver.url, webhook_events=["video.queued"])
    (delivery,) = deliveries(session_factory, job_id)
    publisher = RecordingWebhookPublisher()
    relay_webhooks(session_factory=session_factory, publisher=publisher, settings=hook_settings)
    relay_webhooks(session_factory=session_factory, publisher=publisher, settings=hook_settings)
    assert publisher.published.count((delivery.id, 0)) == 1

    with session_scope(session_factory) as session:  # long ago, and the broker still holds it: leave it
        session.get(WebhookDelivery, delivery.id).enqueued_at = utcnow() - timedelta(minutes=5)
    relay_webhooks(session_factory=session_factory, publisher=publisher, settings=hook_settings)
    assert publisher.published.count((delivery.id, 0)) == 1
    forgetful = RecordingWebhookPublisher()  # the broker lost it (Redis flushed): publish again
    relay_webhooks(session_factory=session_factory, publisher=forgetful, settings=hook_settings)
    # (the database is the session's: other tests' pending deliveries may go out too)
    assert [sent for sent in forgetful.published if sent[0] == delivery.id] == [(delivery.id, 0)]
