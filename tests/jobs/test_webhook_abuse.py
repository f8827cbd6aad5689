"""Issue 17: webhook deliveries a hostile receiver cannot stretch or read back, and one client's
slow receivers cannot take every sender thread. Real sockets on loopback, real PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from jobs.broker import redis_client
from jobs.crud import create_job
from jobs.db import session_scope
from jobs.events import NullEventBus
from jobs.models import WebhookAttempt, WebhookDelivery
from jobs.relay import fan_out
from jobs.settings import Settings
from jobs.validation import JobRequest
from jobs.webhooks.delivery import AttemptOutcome, deliver, send_attempt
from jobs.webhooks.slots import RedisClientSlots
from jobs.webhooks.targets import Target
from tests.receiver import Answer, Receiver

LOOPBACK = frozenset({"127.0.0.1:*"})


class DripServer:
    """Accepts a connection and answers a valid HTTP response one byte every ``interval_s``: every
    single read is quick, so per-read timeouts never fire; only a whole-attempt deadline does."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: " + b"x" * 200 + b"\r\n\r\nok"

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            for byte in self.RESPONSE:
                if self.stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client hung up: what the deadline is for
                self.sent += 1
                time.sleep(self.interval_s)


@pytest.fixture
def drip() -> Iterator[DripServer]:
    server = DripServer()
    server.thread.start()
    yield server
    server.stop.set()
    server.sock.close()


def test_a_dripping_receiver_is_cut_off_at_the_attempt_deadline(drip: DripServer) -> None:
    # The full answer takes about 22 s at one byte per 0.1 s; each read is 0.1 s, far under the timeout.
    target = Target(
        url=f"http://127.0.0.1:{drip.port}/hook", scheme="http", host="127.0.0.1", port=drip.port, address=None
    )
    result = send_attempt(target, body=b"{}", headers={}, timeout_s=1.0)
    assert result.status_code is None
    assert result.error is not None and "timed out" in result.error
    assert drip.sent < len(DripServer.RESPONSE)  # it never got to finish


def test_the_answer_body_is_kept_only_for_checked_public_targets(receiver: Receiver) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])
    receiver.answer(Answer(500, b"secret internal page"), Answer(500, b"a public receiver's error"))
    allow_listed = Target(url=receiver.url + "/x", scheme="http", host="127.0.0.1", port=port, address=None)
    checked = Target(url=receiver.url + "/x", scheme="http", host="hooks.example", port=port, address="127.0.0.1")
    hidden = send_attempt(allow_listed, body=b"{}", headers={}, timeout_s=5)
    shown = send_attempt(checked, body=b"{}", headers={}, timeout_s=5)
    assert (hidden.status_code, hidden.response_snippet) == (500, None)
    assert (shown.status_code, shown.response_snippet) == (500, "a public receiver's error")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


def test_a_client_at_its_cap_in_another_sender_is_deferred_and_others_are_not(
    session_factory, db_settings: Settings, receiver, redis_url: str
) -> None:
    from jobs.keys import create_key

    settings = db_settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1:*", "webhook_client_concurrency": 2})
    ids = {}
    with session_scope(session_factory) as session:
        for name in ("busy", "calm"):
            owner = create_key(session=session, name=name).record
            job, _ = create_job(
                session=session,
                owner=owner,
                request=JobRequest(prompt="a cat", model="tiny-wan", webhook_url=receiver.url + f"/{name}"),
                webhook_allowed_hosts=LOOPBACK,
            )
            ids[name] = (owner.id, job.id)
    while fan_out(session_factory=session_factory, bus=NullEventBus()):  # the relay writes the deliveries
        pass
    with session_scope(session_factory) as session:
        delivery = {
            name: session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id))
            for name, (_, job_id) in ids.items()
        }
    # Two sender processes' views of the same Redis: the other sender has two slow attempts in flight.
    other_sender = RedisClientSlots(redis_client(redis_url), lease_s=60)
    slots = RedisClientSlots(redis_client(redis_url), lease_s=60)
    busy_owner = ids["busy"][0]
    assert other_sender.acquire(busy_owner, 2) and other_sender.acquire(busy_owner, 2)
    assert slots.acquire(busy_owner, 2) is None

    outcome = deliver(delivery["busy"], session_factory=session_factory, settings=settings, slots=slots)
    assert outcome is AttemptOutcome.DEFERRED
    with session_scope(session_factory) as session:
        deferred = session.get(WebhookDelivery, delivery["busy"])
        assert (deferred.status, deferred.attempts, deferred.enqueued_at) == ("pending", 0, None)
        assert not session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == deferred.id)).all()

    calm = deliver(delivery["calm"], session_factory=session_factory, settings=settings, slots=slots)
    assert calm is AttemptOutcome.SUCCEEDED
    assert slots.in_flight(ids["calm"][0]) == 0 and slots.in_flight(busy_owner) == 2


def test_a_crashed_senders_slot_lease_runs_out_and_a_finished_attempt_gives_its_slot_back(redis_url: str) -> None:
    now = [1_000_000.0]
    crashed = RedisClientSlots(redis_client(redis_url), lease_s=45, clock=lambda: now[0])
    alive = RedisClientSlots(redis_client(redis_url), lease_s=45, clock=lambda: now[0])
    client = 990_001  # no real key: the slots are keyed by id alone
    assert crashed.acquire(client, 1) is not None  # ...and the sender dies without releasing
    assert alive.acquire(client, 1) is None and alive.in_flight(client) == 1

    now[0] += 45.5  # past the lease (the attempt's deadline plus margin): the slot is free again
    assert alive.in_flight(client) == 0
    lease = alive.acquire(client, 1)
    assert lease is not None and crashed.acquire(client, 1) is None
    alive.release(client, lease)
    assert alive.in_flight(client) == 0 and crashed.acquire(client, 1) is not None
