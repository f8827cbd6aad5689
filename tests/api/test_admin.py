"""The admin dashboard's HTTP side against PostgreSQL: who gets in, CSRF, audit rows, bulk actions,
dead-letter requeue and ``/metrics``."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from api.app import create_app
from jobs.db import session_scope
from jobs.lifecycle import fail, start
from jobs.models import AuditEntry, DispatchOutbox, Job
from tests.api.conftest import bearer, csrf_from, login, relay_now

PAGES = ["/admin", "/admin/jobs", "/admin/workers", "/admin/dead", "/admin/keys", "/admin/audit"]
BODY = {"prompt": "a lighthouse in a storm", "size": "96x64", "num_frames": 9, "num_inference_steps": 2}


def submit(client: TestClient, key: str, **fields: object) -> str:
    response = client.post("/v1/videos", json={**BODY, **fields}, headers=bearer(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def audit_rows(factory, action: str) -> list[AuditEntry]:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        return list(session.scalars(select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def make_failed(factory, job_id: str) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        start(session=session, job=job, worker_id="w1")
        fail(session=session, job=job, code="render_error", message="boom")


def test_anonymous_visitors_are_sent_to_the_login_page(admin_settings) -> None:
    with TestClient(create_app(admin_settings)) as anonymous:
        for page in [*PAGES, "/admin/jobs/video_x"]:
            response = anonymous.get(page, follow_redirects=False)
            assert response.status_code == 303, page
            assert response.headers["location"].startswith("/admin/login?next=")
        assert anonymous.post("/admin/jobs/bulk", data={"action": "cancel"}, follow_redirects=False).status_code == 303
        assert anonymous.get("/metrics").status_code == 401


def test_a_client_key_is_refused_with_403_by_bearer_and_by_the_login_form(app_client, new_key) -> None:
    _, client_key = new_key()
    for page in [*PAGES, "/metrics"]:
        assert app_client.get(page, headers=bearer(client_key)).status_code == 403, page
    with TestClient(app_client.app) as browser:
        form = browser.get("/admin/login")
        refused = browser.post("/admin/login", data={"api_key": client_key, "csrf_token": csrf_from(form.text)})
        assert refused.status_code == 403
        assert "not an admin key" in refused.text
        assert "vidq_admin" not in browser.cookies
        assert browser.get("/admin", follow_redirects=False).status_code == 303


def test_an_admin_key_sees_every_page_by_bearer_and_by_cookie(app_client, new_key) -> None:
    _, admin_key = new_key("ops", admin=True)
    for page in PAGES:
        response = app_client.get(page, headers=bearer(admin_key))
        assert response.status_code == 200, page
        assert "content-security-policy" in response.headers
    with TestClient(app_client.app) as browser:
        login(browser, admin_key)
        cookie = next(c for c in browser.cookies.jar if c.name == "vidq_admin")
        assert cookie.has_nonstandard_attr("HttpOnly")
        assert cookie.get_nonstandard_attr("SameSite") == "strict"
        for page in PAGES:
            assert browser.get(page).status_code == 200, page


def test_login_needs_the_form_token_and_sends_only_to_admin_paths(app_client, new_key) -> None:
    _, admin_key = new_key("ops", admin=True)
    with TestClient(app_client.app) as browser:
        assert browser.post("/admin/login", data={"api_key": admin_key, "csrf_token": "forged"}).status_code == 403
        form = browser.get("/admin/login")
        response = browser.post(
            "/admin/login",
            data={"api_key": admin_key, "csrf_token": csrf_from(form.text), "next": "//evil.example/admin"},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/admin"


def test_cookie_actions_without_the_sessions_csrf_token_are_refused(app_client, new_key, factory) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    job_id = submit(app_client, client_key)
    with TestClient(app_client.app) as browser, TestClient(app_client.app) as other:
        login(browser, admin_key)
        other_token = login(other, admin_key)  # a valid token, but of another session
        for token in (None, "", other_token):
            data = {"action": "cancel", "scope": "selected", "ids": [job_id]}
            if token is not None:
                data["csrf_token"] = token
            response = browser.post("/admin/jobs/bulk", data=data, follow_redirects=False)
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "csrf_failed"
        assert browser.post(f"/admin/jobs/{job_id}/cancel", follow_redirects=False).status_code == 403
        assert browser.post("/admin/keys", data={"name": "sneaky"}).status_code == 403
    with session_scope(factory) as session:
        assert session.get(Job, job_id).status == "queued"


def test_bulk_cancel_of_selected_jobs_cancels_them_and_writes_an_audit_row(app_client, new_key, factory) -> None:
    _, client_key = new_key()
    admin_id, admin_key = new_key("ops", admin=True)
    first, second, untouched = (submit(app_client, client_key) for _ in range(3))
    with TestClient(app_client.app) as browser:
        token = login(browser, admin_key)
        response = browser.post(
            "/admin/jobs/bulk",
            data={"csrf_token": token, "action": "cancel", "scope": "selected", "ids": [first, second]},
            follow_redirects=False,
        )
    assert response.status_code == 303
    assert "Cancelled+2" in response.headers["location"]
    with session_scope(factory) as session:
        assert [session.get(Job, i).status for i in (first, second, untouched)] == ["cancelled", "cancelled", "queued"]
    entry = audit_rows(factory, "jobs.bulk_cancel")[-1]
    assert entry.actor_key_id == admin_id
    assert sorted(entry.detail["changed"]) == sorted([first, second])
    assert entry.at is not None and entry.actor.startswith("ops")


def test_bulk_cancel_and_retry_of_the_filtered_jobs_touch_only_matching_ones(app_client, new_key, factory) -> None:
    client_id, client_key = new_key()
    _, other_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    mine = [submit(app_client, client_key, prompt="red fox"), submit(app_client, client_key, prompt="red fox 2")]
    not_matching = submit(app_client, client_key, prompt="blue whale")
    someone_elses = submit(app_client, other_key, prompt="red fox")
    with TestClient(app_client.app) as browser:
        token = login(browser, admin_key)
        filters = {"key": str(client_id), "q": "red fox", "status": ["queued"]}
        browser.post("/admin/jobs/bulk", data={"csrf_token": token, "action": "cancel", "scope": "filtered", **filters})
        with session_scope(factory) as session:
            statuses = {i: session.get(Job, i).status for i in [*mine, not_matching, someone_elses]}
        assert statuses == {mine[0]: "cancelled", mine[1]: "cancelled", not_matching: "queued", someone_elses: "queued"}

        make_failed(factory, not_matching)
        browser.post(
            "/admin/jobs/bulk",
            data={
                "csrf_token": token,
                "action": "retry",
                "scope": "filtered",
                "key": str(client_id),
                "status": ["failed"],
            },
        )
    relay_now(app_client)  # the retry's event becomes an outbox row in the relay's pass
    with session_scope(factory) as session:
        job = session.get(Job, not_matching)
        assert job.status == "queued" and job.error_code is None
        assert session.scalar(
            select(DispatchOutbox).where(DispatchOutbox.job_id == not_matching, DispatchOutbox.id > 0)
        )
    assert audit_rows(factory, "jobs.bulk_retry")[-1].detail["changed"] == [not_matching]


def test_dead_letters_list_failed_jobs_and_requeue_them_through_the_outbox(app_client, new_key, factory) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    job_id = submit(app_client, client_key)
    make_failed(factory, job_id)
    with session_scope(factory) as session:
        outbox_before = len(list(session.scalars(select(DispatchOutbox).where(DispatchOutbox.job_id == job_id))))
    assert job_id in app_client.get("/admin/dead", headers=bearer(admin_key)).text

    with TestClient(app_client.app) as browser:
        token = login(browser, admin_key)
        response = browser.post(
            "/admin/dead/requeue", data={"csrf_token": token, "ids": [job_id]}, follow_redirects=False
        )
    assert response.status_code == 303
    relay_now(app_client)  # the requeue's event becomes an outbox row in the relay's pass
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        assert job.status == "queued"
        outbox = list(session.scalars(select(DispatchOutbox).where(DispatchOutbox.job_id == job_id)))
        assert len(outbox) == outbox_before + 1
    assert job_id not in app_client.get("/admin/dead", headers=bearer(admin_key)).text
    assert audit_rows(factory, "dead.requeue")[-1].detail["changed"] == [job_id]


def test_retrying_a_job_that_is_not_failed_is_a_conflict(app_client, new_key) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    job_id = submit(app_client, client_key)
    response = app_client.post(f"/admin/jobs/{job_id}/retry", headers=bearer(admin_key))
    assert response.status_code == 409


def test_keys_are_created_and_revoked_from_the_keys_page_and_audited(app_client, new_key, factory) -> None:
    _, admin_key = new_key("ops", admin=True)
    with TestClient(app_client.app) as browser:
        token = login(browser, admin_key)
        page = browser.post("/admin/keys", data={"csrf_token": token, "name": "new-client"})
        assert page.status_code == 200
        created = page.text.split('id="new-key" readonly value="')[1].split('"')[0]
        assert created.startswith("vq_")
        key_id = int(audit_rows(factory, "key.create")[-1].target.split(":")[1])
        assert app_client.get("/v1/videos", headers=bearer(created)).status_code == 200
        browser.post(f"/admin/keys/{key_id}/revoke", data={"csrf_token": token})
    assert app_client.get("/v1/videos", headers=bearer(created)).status_code == 401
    assert audit_rows(factory, "key.revoke")[-1].target == f"key:{key_id}"


def test_revoking_an_admin_key_ends_its_browser_sessions(app_client, new_key, factory) -> None:
    admin_id, admin_key = new_key("ops", admin=True)
    _, other_admin = new_key("boss", admin=True)
    with TestClient(app_client.app) as browser:
        login(browser, admin_key)
        app_client.post(f"/admin/keys/{admin_id}/revoke", headers=bearer(other_admin))
        assert browser.get("/admin", follow_redirects=False).status_code == 303


def test_metrics_are_prometheus_text_with_vidq_names(app_client, new_key) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    submit(app_client, client_key)
    response = app_client.get("/metrics", headers=bearer(admin_key))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert all(name.startswith("vidq_") for name in families)
    expected = {
        "vidq_jobs",
        "vidq_queue_depth",
        "vidq_queue_oldest_age_seconds",
        "vidq_webhook_attempts",
        "vidq_job_latency_seconds",
        "vidq_queue_wait_seconds",
        "vidq_denoising_step_seconds",
        "vidq_stage_seconds",
        "vidq_jobs_submitted",
        "vidq_jobs_finished",
        "vidq_http_requests",
        "vidq_http_request_duration_seconds",
        "vidq_workers_online",
        "vidq_worker_last_heartbeat_timestamp_seconds",
    }
    assert expected <= set(families)
    queued = next(s for s in families["vidq_jobs"].samples if s.labels == {"status": "queued"})
    assert queued.value >= 1
    assert families["vidq_job_latency_seconds"].type == "histogram"
    depth = {s.labels["queue"]: s.value for s in families["vidq_queue_depth"].samples}
    assert sum(depth.values()) >= 1


def test_repeated_failed_logins_from_one_client_are_throttled(admin_settings, new_key) -> None:
    from api.app import create_app
    from api.login_throttle import MAX_FAILURES

    _, admin_key = new_key("admin", admin=True)
    with TestClient(create_app(admin_settings)) as browser:  # its own app: its own throttle
        for _ in range(MAX_FAILURES):
            form = browser.get("/admin/login")
            refused = browser.post("/admin/login", data={"api_key": "vq_guess", "csrf_token": csrf_from(form.text)})
            assert refused.status_code == 401
        form = browser.get("/admin/login")
        blocked = browser.post("/admin/login", data={"api_key": admin_key, "csrf_token": csrf_from(form.text)})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert "Too many failed attempts" in blocked.text


def test_the_login_throttle_forgets_failures_after_its_window() -> None:
    from api.login_throttle import LoginThrottle

    throttle = LoginThrottle(max_failures=2, window_s=60)
    throttle.failed("10.0.0.1", now=0)
    throttle.failed("10.0.0.1", now=1)
    assert throttle.retry_after_s("10.0.0.1", now=2) == 59
    assert throttle.retry_after_s("10.0.0.2", now=2) == 0  # other clients are not affected
    assert throttle.retry_after_s("10.0.0.1", now=61) == 0
    throttle.failed("10.0.0.1", now=70)
    throttle.succeeded("10.0.0.1")
    assert throttle.retry_after_s("10.0.0.1", now=71) == 0


def test_the_dashboards_live_stream_reports_each_jobs_changes_and_ends_when_all_are_final(
    app_client, new_key, factory
) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    failed, cancelled = submit(app_client, client_key), submit(app_client, client_key)
    make_failed(factory, failed)
    assert app_client.post(f"/v1/videos/{cancelled}/cancel", headers=bearer(client_key)).status_code == 200
    response = app_client.get(f"/admin/jobs/live?ids={failed},{cancelled},video_gone", headers=bearer(admin_key))
    assert response.status_code == 200
    updates = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith('data: {"')]
    assert {(u["id"], u["status"]) for u in updates} == {(failed, "failed"), (cancelled, "cancelled")}
    assert response.text.rstrip().endswith("event: done\ndata: {}")
