"""Every write route commits before it answers: right after the response, a separate database session
(another API replica, a worker) already sees the change.

The app's request session (``api.deps.get_session``) rolls back whatever is left uncommitted when
the request ends, so a route that relied on the dependency's teardown to commit loses its write and
fails these tests, however the teardown is scheduled relative to the response."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.routes import admin as admin_routes
from jobs.db import session_scope, utcnow
from jobs.lifecycle import fail, start
from jobs.models import ApiKey, AuditEntry, Job, Lora, WebhookDelivery, WebhookEndpoint
from jobs.settings import Settings
from tests.api.conftest import bearer, login, relay_now
from tests.api.test_loras import adapter_bytes, upload

TINY = {"prompt": "a kite over a beach", "model": "tiny-wan", "size": "96x64", "num_inference_steps": 2}
HOOK = "http://127.0.0.1:9/hook"  # loopback is allowed below; nothing is delivered (no worker)


@pytest.fixture(scope="module")
def client(admin_settings: Settings) -> Iterator[TestClient]:
    app = create_app(admin_settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1:*"}))
    with TestClient(app) as test_client:
        yield test_client


def fresh(factory: sessionmaker[Session]) -> Session:
    return factory()


def test_client_write_routes_are_committed_before_they_answer(client: TestClient, new_key, factory) -> None:
    _, key = new_key()
    auth = bearer(key)

    # POST /v1/videos
    job = client.post("/v1/videos", json={**TINY, "webhook_url": HOOK}, headers=auth).json()
    with fresh(factory) as session:
        assert session.get(Job, job["id"]) is not None
    relay_now(client)  # the delivery is the relay's, written after the commit
    with fresh(factory) as session:
        (delivery,) = session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job["id"])).all()

    # POST /v1/videos/{id}/webhook_deliveries/{delivery_id}/redeliver
    with session_scope(factory) as session:
        session.get(WebhookDelivery, delivery.id).status = "failed"
    client.post(f"/v1/videos/{job['id']}/webhook_deliveries/{delivery.id}/redeliver", headers=auth)
    with fresh(factory) as session:
        assert session.get(WebhookDelivery, delivery.id).status == "pending"

    # POST /v1/videos/{id}/cancel
    assert client.post(f"/v1/videos/{job['id']}/cancel", headers=auth).status_code == 200
    with fresh(factory) as session:
        assert session.get(Job, job["id"]).status == "cancelled"

    # DELETE /v1/videos/{id}
    assert client.delete(f"/v1/videos/{job['id']}", headers=auth).status_code == 200
    with fresh(factory) as session:
        assert session.get(Job, job["id"]) is None

    # POST /v1/webhook_endpoints
    endpoint = client.post("/v1/webhook_endpoints", json={"url": HOOK}, headers=auth).json()
    with fresh(factory) as session:
        assert session.get(WebhookEndpoint, endpoint["id"]).secret == endpoint["secret"]

    # POST /v1/webhook_endpoints/{id}/rotate_secret
    rotated = client.post(f"/v1/webhook_endpoints/{endpoint['id']}/rotate_secret", headers=auth).json()
    with fresh(factory) as session:
        stored = session.get(WebhookEndpoint, endpoint["id"])
        assert stored.secret == rotated["secret"] and stored.previous_secret == endpoint["secret"]

    # POST /v1/webhook_endpoints/{id}/enable
    with session_scope(factory) as session:
        session.get(WebhookEndpoint, endpoint["id"]).disabled_at = utcnow()
    assert client.post(f"/v1/webhook_endpoints/{endpoint['id']}/enable", headers=auth).json()["status"] == "enabled"
    with fresh(factory) as session:
        assert session.get(WebhookEndpoint, endpoint["id"]).disabled_at is None

    # DELETE /v1/webhook_endpoints/{id}
    assert client.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=auth).status_code == 200
    with fresh(factory) as session:
        assert session.get(WebhookEndpoint, endpoint["id"]) is None

    # GET /v1/webhooks/default/secret creates the secret on first use
    secret = client.get("/v1/webhooks/default/secret", headers=auth).json()["key"]
    with fresh(factory) as session:
        owner = session.scalar(select(ApiKey).where(ApiKey.webhook_secret == secret))
        assert owner is not None

    # POST /v1/loras, DELETE /v1/loras/{id}
    lora = upload(client, key, adapter_bytes()).json()
    with fresh(factory) as session:
        assert session.get(Lora, lora["id"]) is not None
    assert client.delete(f"/v1/loras/{lora['id']}", headers=auth).status_code == 200
    with fresh(factory) as session:
        assert session.get(Lora, lora["id"]) is None


def test_admin_write_routes_are_committed_before_they_answer(client: TestClient, new_key, factory) -> None:
    _, client_key = new_key()
    admin_id, admin_key = new_key("ops", admin=True)
    admin = bearer(admin_key)

    def submit() -> str:
        return str(
            client.post("/v1/videos", json={**TINY, "webhook_url": HOOK}, headers=bearer(client_key)).json()["id"]
        )

    def failed() -> str:
        job_id = submit()
        with session_scope(factory) as session:
            job = session.get(Job, job_id)
            start(session=session, job=job, worker_id="w1")
            fail(session=session, job=job, code="render_error", message="boom")
        return job_id

    def status_of(job_id: str) -> str:
        with fresh(factory) as session:
            return session.get(Job, job_id).status

    cancelled = submit()
    client.post(f"/admin/jobs/{cancelled}/cancel", headers=admin, follow_redirects=False)
    assert status_of(cancelled) == "cancelled"

    retried = failed()
    client.post(f"/admin/jobs/{retried}/retry", headers=admin, follow_redirects=False)
    assert status_of(retried) == "queued"

    requeued = failed()
    client.post("/admin/dead/requeue", data={"ids": [requeued]}, headers=admin, follow_redirects=False)
    assert status_of(requeued) == "queued"

    bulk = submit()
    client.post("/admin/jobs/bulk", data={"action": "cancel", "ids": [bulk]}, headers=admin, follow_redirects=False)
    assert status_of(bulk) == "cancelled"

    relay_now(client)
    with fresh(factory) as session:
        delivery_id = session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == bulk).limit(1))
    with session_scope(factory) as session:
        session.get(WebhookDelivery, delivery_id).status = "failed"
    client.post(f"/admin/jobs/{bulk}/webhooks/{delivery_id}/redeliver", headers=admin, follow_redirects=False)
    with fresh(factory) as session:
        assert session.get(WebhookDelivery, delivery_id).status == "pending"

    client.post("/admin/keys", data={"name": "made-by-admin"}, headers=admin)
    with fresh(factory) as session:
        made = session.scalar(select(ApiKey).where(ApiKey.name == "made-by-admin"))
        assert made is not None
    client.post(f"/admin/keys/{made.id}/revoke", headers=admin, follow_redirects=False)
    with fresh(factory) as session:
        assert session.get(ApiKey, made.id).revoked_at is not None

    client.post("/admin/logout", headers=admin, follow_redirects=False)
    login(client, admin_key)  # the form, with its CSRF cookie
    with fresh(factory) as session:
        actions = set(session.scalars(select(AuditEntry.action).where(AuditEntry.actor_key_id == admin_id)))
    assert {"job.cancel", "job.retry", "dead.requeue", "jobs.bulk_cancel", "webhook.redeliver"} <= actions
    assert {"key.create", "key.revoke", "logout", "login"} <= actions


# What the two tests above exercise; a new write route must be added to them (and here).
COVERED = {
    ("POST", "/v1/videos"),
    ("POST", "/v1/videos/{video_id}/cancel"),
    ("DELETE", "/v1/videos/{video_id}"),
    ("POST", "/v1/videos/{video_id}/webhook_deliveries/{delivery_id}/redeliver"),
    ("POST", "/v1/webhook_endpoints"),
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}"),
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/rotate_secret"),
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/enable"),
    ("POST", "/v1/loras"),
    ("DELETE", "/v1/loras/{lora_id}"),
    ("POST", "/admin/login"),
    ("POST", "/admin/logout"),
    ("POST", "/admin/jobs/bulk"),
    ("POST", "/admin/jobs/{job_id}/cancel"),
    ("POST", "/admin/jobs/{job_id}/retry"),
    ("POST", "/admin/jobs/{job_id}/webhooks/{delivery_id}/redeliver"),
    ("POST", "/admin/dead/requeue"),
    ("POST", "/admin/keys"),
    ("POST", "/admin/keys/{key_id}/revoke"),
}


def test_every_write_route_is_covered_here(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    writes = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if method != "get" and "not supported" not in operation.get("tags", [])
    }
    writes |= {  # the dashboard is not in the OpenAPI document
        (method, route.path)
        for route in admin_routes.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods - {"GET", "HEAD"}
    }
    assert writes == COVERED
