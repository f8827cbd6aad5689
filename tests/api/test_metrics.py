"""``/metrics`` counters and histograms are true counters: they only go up between scrapes, even when
the rows they counted are deleted, and they count what happened (requests by route template and
status, submissions, outcomes), not what the database holds now."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from jobs.db import session_scope
from jobs.execution import claim_job
from jobs.metrics import after_commit
from jobs.models import Job
from tests.api.conftest import bearer
from tests.api.test_admin import submit

MONOTONIC_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def scrape(client, admin_key: str) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    response = client.get("/metrics", headers=bearer(admin_key))
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        if family.type in ("counter", "histogram"):
            for sample in family.samples:
                if sample.name.endswith(MONOTONIC_SUFFIXES):
                    samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in samples.items() if n == name and set(labels.items()) <= set(lbls))


def test_counters_only_go_up_across_scrapes(app_client, new_key, factory) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    first = scrape(app_client, admin_key)

    jobs = [submit(app_client, client_key) for _ in range(3)]
    assert app_client.get("/v1/videos/video_0000000000000000000000000", headers=bearer(client_key)).status_code == 404
    assert app_client.post(f"/v1/videos/{jobs[0]}/cancel", headers=bearer(client_key)).status_code == 200
    second = scrape(app_client, admin_key)

    for job_id in jobs:  # the rows go; what was counted stays counted
        assert app_client.delete(f"/v1/videos/{job_id}", headers=bearer(client_key)).status_code == 200
    third = scrape(app_client, admin_key)

    for earlier, later in ((first, second), (second, third)):
        for key, before in earlier.items():
            assert key in later, f"{key} vanished between scrapes"
            assert later[key] >= before, f"{key} went down: {before} -> {later[key]}"

    submitted = value(second, "vidq_jobs_submitted_total") - value(first, "vidq_jobs_submitted_total")
    assert submitted == 3
    assert (
        value(second, "vidq_jobs_finished_total", outcome="cancelled")
        - value(first, "vidq_jobs_finished_total", outcome="cancelled")
        == 1
    )
    created = value(second, "vidq_http_requests_total", route="/v1/videos", method="POST", status="202")
    assert created - value(first, "vidq_http_requests_total", route="/v1/videos", method="POST", status="202") == 3
    # the route template, never the raw path with a job id in it
    assert value(second, "vidq_http_requests_total", route="/v1/videos/{video_id}", status="404") >= 1
    assert not any("video_0" in dict(labels).get("route", "") for (_, labels) in third)
    assert value(third, "vidq_jobs_submitted_total") == value(second, "vidq_jobs_submitted_total")
    assert value(third, "vidq_http_request_duration_seconds_count") > value(
        second, "vidq_http_request_duration_seconds_count"
    )


def test_a_rolled_back_change_is_not_counted(app_client, new_key, factory) -> None:
    _, client_key = new_key()
    _, admin_key = new_key("ops", admin=True)
    job_id = submit(app_client, client_key)
    before = scrape(app_client, admin_key)
    session = factory()
    try:
        claim_job(session=session, job_id=job_id, worker_id="w")  # start() observes the queue wait...
        session.rollback()  # ...but the claim never happened
    finally:
        session.close()
    assert value(scrape(app_client, admin_key), "vidq_queue_wait_seconds_count") == value(
        before, "vidq_queue_wait_seconds_count"
    )
    with session_scope(factory) as session:
        claim_job(session=session, job_id=job_id, worker_id="w")
    assert (
        value(scrape(app_client, admin_key), "vidq_queue_wait_seconds_count")
        == value(before, "vidq_queue_wait_seconds_count") + 1
    )


def test_after_commit_without_a_session_applies_at_once() -> None:
    seen = []
    after_commit(Job(id="video_x"), lambda: seen.append(1))  # a row no session holds
    assert seen == [1]
