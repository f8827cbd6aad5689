"""The REST contract of `/v1/videos`: authentication, isolation between clients, idempotency,
validation and listing, against the real PostgreSQL, Redis and S3 (moto).

These need no worker: jobs stay queued, which is what the queue-position checks rely on. The module
has a database of its own, so no other test module's jobs change what it sees (order-independent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs import migrate
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.keys import create_key
from jobs.settings import Settings
from tests.conftest import create_database, drop_database, sqlalchemy_url


@pytest.fixture(scope="module")
def service_settings(
    redis_url: str, s3_endpoint: str, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """The API's settings, on a database created and migrated for this module alone."""
    name = create_database()
    url = sqlalchemy_url(name)
    migrate.upgrade(Settings(database_url=url))
    yield Settings(
        database_url=url,
        redis_url=redis_url,
        s3_endpoint=s3_endpoint,
        s3_access_key="testing",
        s3_secret_key="testing",
        s3_bucket="vidq-contract",
        models_dir=models_dir,
        data_dir=tmp_path_factory.mktemp("contract-data"),
        secret_key="contract-test-secret",
        sweeper_enabled=False,  # no worker here: nothing to repair
    )
    drop_database(name)


@pytest.fixture(scope="module")
def api(service_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def make_key(service_settings: Settings) -> Iterator[Callable[..., str]]:
    engine = make_engine(service_settings)
    factory = make_session_factory(engine)

    def _make(name: str = "client", admin: bool = False) -> str:
        with session_scope(factory) as session:
            return create_key(session=session, name=name, is_admin=admin).plaintext

    yield _make
    engine.dispose()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


BODY = {"prompt": "a lighthouse in a storm", "model": "tiny-wan"}


def test_requests_without_a_valid_key_are_refused(api) -> None:
    missing = api.get("/v1/videos")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    wrong = api.get("/v1/videos", headers=auth("vq_not-a-real-key"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"


def test_revoked_keys_stop_working(api, make_key, service_settings) -> None:
    from sqlalchemy import select

    from jobs.db import make_engine, make_session_factory, session_scope
    from jobs.keys import hash_key, revoke_key
    from jobs.models import ApiKey

    key = make_key()
    assert api.get("/v1/videos", headers=auth(key)).status_code == 200
    with session_scope(make_session_factory(make_engine(service_settings))) as session:
        record = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        assert record is not None and record.key_hash != key  # only the hash is stored
        revoke_key(session=session, key_id=record.id)
    assert api.get("/v1/videos", headers=auth(key)).status_code == 401


def test_a_client_sees_and_touches_only_its_own_jobs(api, make_key) -> None:
    alice, bob = make_key("alice"), make_key("bob")
    job = api.post("/v1/videos", json=BODY, headers=auth(alice)).json()
    for method, path in [
        ("GET", f"/v1/videos/{job['id']}"),
        ("GET", f"/v1/videos/{job['id']}/content"),
        ("POST", f"/v1/videos/{job['id']}/cancel"),
        ("DELETE", f"/v1/videos/{job['id']}"),
    ]:
        response = api.request(method, path, headers=auth(bob))
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    assert api.get("/v1/videos", headers=auth(bob)).json()["data"] == []
    assert api.get(f"/v1/videos/{job['id']}", headers=auth(alice)).json()["status"] in ("queued", "in_progress")


def test_same_idempotency_key_and_body_returns_the_first_job(api, make_key) -> None:
    key = make_key()
    headers = {**auth(key), "Idempotency-Key": "order-42"}
    first = api.post("/v1/videos", json=BODY, headers=headers)
    again = api.post("/v1/videos", json=BODY, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert len(api.get("/v1/videos", headers=auth(key)).json()["data"]) == 1

    different = api.post("/v1/videos", json={**BODY, "prompt": "something else"}, headers=headers)
    assert different.status_code == 422
    assert different.json()["error"] == {
        "code": "idempotency_key_reused",
        "message": "this Idempotency-Key was already used with a different request body",
        "param": "Idempotency-Key",
        "type": "invalid_request_error",
    }
    # another client may use the same Idempotency-Key independently
    other = api.post("/v1/videos", json=BODY, headers={**auth(make_key()), "Idempotency-Key": "order-42"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**BODY, "model": "no-such-model"}, "model"),
        ({**BODY, "size": "1920x1080"}, "size"),
        ({**BODY, "num_frames": 8}, "num_frames"),
        ({**BODY, "num_frames": 1001}, "num_frames"),
        ({**BODY, "num_inference_steps": 0}, "num_inference_steps"),
        ({**BODY, "num_inference_steps": 201}, "num_inference_steps"),
        ({**BODY, "guidance_scale": 99}, "guidance_scale"),
        ({**BODY, "prompt": ""}, "prompt"),
        ({**BODY, "prompt": "x" * 10_000}, "prompt"),
        ({"model": "tiny-wan"}, "prompt"),
        ({**BODY, "num_frames": "many"}, "num_frames"),
        ({**BODY, "colour": "blue"}, "colour"),
    ],
)
def test_invalid_requests_get_422_naming_the_field(api, make_key, body: dict, param: str) -> None:
    response = api.post("/v1/videos", json=body, headers=auth(make_key()))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] in ("invalid_parameter",) and error["message"]


def test_malformed_json_gets_a_clear_422(api, make_key) -> None:
    response = api.post(
        "/v1/videos", content=b'{"prompt": "a cat",', headers={**auth(make_key()), "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_json"


def test_listing_is_newest_first_with_cursor_pagination_and_status_filter(api, make_key) -> None:
    key = make_key()
    ids = [api.post("/v1/videos", json=BODY, headers=auth(key)).json()["id"] for _ in range(3)]
    page = api.get("/v1/videos?limit=2", headers=auth(key)).json()
    assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = api.get(f"/v1/videos?limit=2&after={page['last_id']}", headers=auth(key)).json()
    assert [v["id"] for v in rest["data"]] == [ids[0]] and rest["has_more"] is False
    cancelled = api.post(f"/v1/videos/{ids[1]}/cancel", headers=auth(key)).json()
    assert cancelled["status"] == "cancelled"
    only = api.get("/v1/videos?status=cancelled", headers=auth(key)).json()
    assert [v["id"] for v in only["data"]] == [ids[1]]
    bad = api.get("/v1/videos?status=paused", headers=auth(key))
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "status"


def test_queued_jobs_show_their_queue_position(api, make_key) -> None:
    key = make_key()
    first = api.post("/v1/videos", json=BODY, headers=auth(key)).json()
    second = api.post("/v1/videos", json=BODY, headers=auth(key)).json()
    assert first["queue_position"] >= 1
    assert second["queue_position"] == first["queue_position"] + 1


def test_content_of_an_unfinished_job_is_a_409(api, make_key) -> None:
    key = make_key()
    job = api.post("/v1/videos", json=BODY, headers=auth(key)).json()
    response = api.get(f"/v1/videos/{job['id']}/content", headers=auth(key))
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"


def test_health_and_readiness(api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}
    assert "/v1/videos" in api.get("/openapi.json").json()["paths"]


def test_a_request_too_large_for_every_worker_gpu_is_refused_at_submission(api, make_key, service_settings) -> None:
    import time

    from jobs.workers import WorkerStatus, make_worker_registry

    registry = make_worker_registry(service_settings)
    now = time.time()
    registry.publish(
        WorkerStatus(
            worker_id="small-gpu:1",
            host="small-gpu",
            pid=1,
            heartbeat_at=now,
            started_at=now,
            served_models=["wan2.1-t2v-14b"],
            vram_budget_bytes=4 * 2**30,
        )
    )
    try:
        _assert_too_large_refused(api, make_key)
    finally:  # leave no phantom worker for the dashboard tests
        import redis

        redis.Redis.from_url(service_settings.redis_url).delete("vidq:worker:small-gpu:1")


def _assert_too_large_refused(api, make_key) -> None:  # type: ignore[no-untyped-def]
    body = {"prompt": "a city at night", "model": "wan2.1-t2v-14b", "size": "1280x720", "num_frames": 81}
    response = api.post("/v1/videos", json=body, headers=auth(make_key()))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_gpu_memory" and error["param"] == "size"
    assert "4.0 GiB" in error["message"]
