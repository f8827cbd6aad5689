"""Webhooks on the real stack: the API's endpoints and checks, and deliveries made by the Celery
task of a `vidq worker` process (which consumes the `webhooks` queue too) to a loopback receiver."""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest

from tests.receiver import Answer, Receiver
from tests.service.conftest import auth, finished, wait_for_job
from vidq.client import verify_webhook

pytestmark = pytest.mark.integration

BODY = {"prompt": "a paper boat on a river", "model": "tiny-wan", "num_inference_steps": 2}


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker, no_backlog):  # type: ignore[no-untyped-def]
    return start_worker()


def wait_for_deliveries(api, key: str, job_id: str, until, timeout_s: float = 60.0) -> list[dict]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        data = api.get(f"/v1/videos/{job_id}/webhook_deliveries", headers=auth(key)).json()["data"]
        if until(data):
            return data
        if time.monotonic() > deadline:
            raise TimeoutError(f"deliveries never reached the expected state: {data}")
        time.sleep(0.1)


def test_private_webhook_targets_are_refused_at_creation(api, make_key, receiver: Receiver) -> None:
    key = make_key()
    for url in ("http://10.0.0.8/hook", "http://169.254.169.254/latest", "http://localhost:9/hook", "file:///etc"):
        response = api.post("/v1/videos", json={**BODY, "webhook_url": url}, headers=auth(key))
        assert response.status_code == 422, url
        assert response.json()["error"]["param"] == "webhook_url"
    endpoint = api.post("/v1/webhook_endpoints", json={"url": "http://192.168.1.1/"}, headers=auth(key))
    assert endpoint.status_code == 422 and endpoint.json()["error"]["param"] == "url"
    unknown = api.post(
        "/v1/videos", json={**BODY, "webhook_url": receiver.url, "webhook_events": ["video.done"]}, headers=auth(key)
    )
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "webhook_events"
    assert api.get("/v1/videos", headers=auth(key)).json()["data"] == []


def test_endpoints_show_their_secret_once_and_belong_to_their_client(api, make_key, receiver) -> None:
    key, other = make_key(), make_key()
    created = api.post(
        "/v1/webhook_endpoints", json={"url": receiver.url, "events": ["video.completed"]}, headers=auth(key)
    )
    assert created.status_code == 201
    endpoint = created.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["status"] == "enabled"
    listed = api.get("/v1/webhook_endpoints", headers=auth(key)).json()["data"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    assert "secret" not in api.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key)).json()

    rotated = api.post(f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", headers=auth(key)).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != endpoint["secret"]

    assert api.get(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(other)).status_code == 404
    assert api.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(other)).status_code == 404
    deleted = api.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth(key))
    assert deleted.json() == {"id": endpoint["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert api.get("/v1/webhook_endpoints", headers=auth(key)).json()["data"] == []

    secret = api.get("/v1/webhooks/default/secret", headers=auth(key)).json()
    assert secret["key"].startswith("whsec_")
    assert api.get("/v1/webhooks/default/secret", headers=auth(key)).json() == secret  # stable
    assert api.get("/v1/webhooks/default/secret", headers=auth(other)).json() != secret


def test_a_completed_job_reaches_a_flaky_receiver_after_retries_and_can_be_replayed(
    api, make_key, receiver: Receiver
) -> None:
    key = make_key()
    secret = api.get("/v1/webhooks/default/secret", headers=auth(key)).json()["key"]
    receiver.answer(Answer(500, b"oops"), Answer(502, b"bad gateway"))  # then 200
    endpoint_receiver = Receiver().start()  # a second, healthy receiver for all the client's jobs
    try:
        endpoint = api.post("/v1/webhook_endpoints", json={"url": endpoint_receiver.url}, headers=auth(key)).json()
        job = api.post(
            "/v1/videos",
            json={**BODY, "webhook_url": receiver.url + "/hook", "webhook_events": ["video.completed"]},
            headers=auth(key),
        ).json()
        assert job["webhook_url"] == receiver.url + "/hook" and job["webhook_events"] == ["video.completed"]
        assert wait_for_job(api, key, job["id"], finished)["status"] == "completed"
        data = wait_for_deliveries(
            api, key, job["id"], lambda data: len(data) == 4 and all(d["status"] != "pending" for d in data)
        )
        endpoint_events = list(endpoint_receiver.requests)
    finally:
        endpoint_receiver.stop()

    # The flaky receiver: one delivery, three recorded attempts, exactly one success.
    (delivery,) = [d for d in data if d["endpoint_id"] is None]
    assert delivery["event_type"] == "video.completed" and delivery["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 200]
    # The receiver is allow-listed (a private host): what it answers is never shown back (issue 17).
    assert [a["response_snippet"] for a in delivery["attempts"]] == [None, None, None]
    assert delivery["attempts"][0]["next_attempt_at"] and delivery["attempts"][-1]["next_attempt_at"] is None
    assert len(receiver.requests) == 3 and {r.headers["webhook-id"] for r in receiver.requests} == {delivery["id"]}
    event = verify_webhook(secret, receiver.requests[-1].headers, receiver.requests[-1].body)
    assert event["type"] == "video.completed" and event["data"]["id"] == job["id"]
    assert event["data"]["status"] == "completed" and event["data"]["stage_timings"]
    assert event["data"]["urls"]["expires_at"] > time.time()
    video = httpx.get(event["data"]["urls"]["video"])  # the presigned result URL works
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"

    # The endpoint got every state change, each signed with the endpoint's own secret.
    assert sorted(d["event_type"] for d in data if d["endpoint_id"] == endpoint["id"]) == [
        "video.completed",
        "video.queued",
        "video.started",
    ]
    types = {verify_webhook(endpoint["secret"], r.headers, r.body)["type"] for r in endpoint_events}
    assert types == {"video.queued", "video.started", "video.completed"}

    # A replay sends the same webhook-id once more.
    replay = api.post(f"/v1/videos/{job['id']}/webhook_deliveries/{delivery['id']}/redeliver", headers=auth(key))
    assert replay.status_code == 202 and replay.json()["status"] == "pending"
    (replayed,) = receiver.wait_for(4)[3:]
    assert replayed.headers["webhook-id"] == delivery["id"] and json.loads(replayed.body)["type"] == "video.completed"
    wait_for_deliveries(
        api,
        key,
        job["id"],
        lambda data: any(
            d["id"] == delivery["id"] and len(d["attempts"]) == 4 and d["status"] == "succeeded" for d in data
        ),
    )
    assert api.get(f"/v1/videos/{job['id']}/webhook_deliveries", headers=auth(make_key())).status_code == 404


def test_a_webhook_only_worker_loads_no_model(start_worker) -> None:
    # It would fail to start if it tried to load this model, which is not installed.
    sender = start_worker("--queues", "webhooks", VIDQ_WORKER_MODELS="wan2.1-t2v-1.3b")
    log = sender.log()
    assert "consuming ['webhooks']" in log and "loading model" not in log
    assert "concurrency: 8 (thread)" in log  # deliveries wait on receivers, so they run on threads
    sender.stop()


def test_no_key_or_secret_reaches_the_api_or_worker_logs(api, make_key, receiver, worker, caplog) -> None:  # type: ignore[no-untyped-def]
    """Issue 17: an API + worker run that creates a key, signing secrets (default, endpoint, rotated)
    and webhook URLs with tokens, renders and delivers; none of them appears in either log."""
    caplog.set_level(logging.DEBUG)  # every record of the in-process API, libraries included
    key = make_key()
    created = api.post(
        "/v1/webhook_endpoints", json={"url": receiver.url + "/hook?token=ENDPOINT-TOKEN-1"}, headers=auth(key)
    ).json()
    rotated = api.post(f"/v1/webhook_endpoints/{created['id']}/rotate_secret", headers=auth(key)).json()
    default = api.get("/v1/webhooks/default/secret", headers=auth(key)).json()
    job = api.post(
        "/v1/videos", json={**BODY, "webhook_url": receiver.url + "/job?token=JOB-TOKEN-2"}, headers=auth(key)
    ).json()
    assert finished(wait_for_job(api, key, job["id"], finished))
    wait_for_deliveries(
        api, key, job["id"], lambda data: data and all(d["status"] == "succeeded" for d in data), timeout_s=60
    )
    assert len(receiver.requests) >= 2  # the job's URL and the endpoint both got events
    # a database error whose statement carries the secret (a duplicate id): its parameters stay out
    from sqlalchemy.exc import IntegrityError

    from jobs.db import session_scope
    from jobs.models import WebhookEndpoint

    with pytest.raises(IntegrityError), session_scope(api.app.state.vidq.session_factory) as session:
        session.add(WebhookEndpoint(id=created["id"], owner_id=1, url="https://x", secret=rotated["secret"]))
        session.flush()
    logging.getLogger("vidq.test").exception("simulated: logging the database error")

    secrets = [key, created["secret"], rotated["secret"], default["key"], "ENDPOINT-TOKEN-1", "JOB-TOKEN-2"]
    worker_log = worker.log()
    assert "webhook" in worker_log  # the worker did log its deliveries (hosts only)
    for secret in secrets:
        assert secret not in caplog.text, secret[:8]
        assert secret not in worker_log, secret[:8]
