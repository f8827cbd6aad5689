"""Issue 17: the API as a hostile client uses it, against PostgreSQL — forged or replayed admin
sessions, oversized and malformed input, races on webhook endpoints. Every answer is a 4xx, never
a 500, and the database keeps the invariants (one stored secret, the endpoint cap, deliveries kept)."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
from collections.abc import Callable

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError

from api.app import create_app
from api.edge import EdgeMiddleware
from api.streams import bounded
from jobs.db import make_engine, session_scope, utcnow
from jobs.errors import Unauthenticated
from jobs.keys import KeyCache, authenticate, create_key
from jobs.models import ApiKey, Job, WebhookDelivery, WebhookEndpoint
from jobs.settings import MissingSecretKey, Settings
from jobs.webhooks import endpoints
from tests.api.conftest import bearer, login, relay_now
from vidq.embedded import free_port

EXAMPLE = frozenset({"example.com"})  # allow-listed: no DNS lookup in tests
BODY = {"prompt": "a lighthouse in a storm", "size": "96x64", "num_frames": 9, "num_inference_steps": 2}


# ---- secrets ------------------------------------------------------------------------------------


def test_the_service_refuses_the_default_secret_unless_embedded_on_loopback(database_url: str, tmp_path) -> None:
    served = Settings(database_url=database_url, data_dir=tmp_path, _env_file=None)
    with pytest.raises(MissingSecretKey, match="VIDQ_SECRET_KEY"):
        create_app(served)
    embedded = Settings(data_dir=tmp_path)
    embedded.require_service_secret(host="127.0.0.1")
    embedded.require_service_secret(host="::1")
    with pytest.raises(MissingSecretKey):
        embedded.require_service_secret(host="0.0.0.0")
    Settings(database_url=database_url, secret_key="s3cret-enough").require_service_secret()


def test_logout_ends_the_session_on_the_server(app_client: TestClient, new_key) -> None:
    _, admin_key = new_key("admin", admin=True)
    with TestClient(app_client.app) as browser:
        csrf = login(browser, admin_key)
        stolen = browser.cookies.get("vidq_admin")
        assert browser.get("/admin", follow_redirects=False).status_code == 200
        assert browser.post("/admin/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    with TestClient(app_client.app) as replay:
        replay.cookies.set("vidq_admin", stolen)
        refused = replay.get("/admin", follow_redirects=False)
        assert refused.status_code == 303
        assert refused.headers["location"].startswith("/admin/login")


# ---- input --------------------------------------------------------------------------------------


def test_an_oversized_body_is_refused_before_it_is_read_or_authenticated(app_client: TestClient) -> None:
    limit = app_client.app.state.vidq.settings.max_request_body_bytes
    declared = app_client.post(
        "/v1/videos", content=b"x", headers={"content-length": str(limit + 1), "content-type": "application/json"}
    )
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    streamed = app_client.post("/v1/videos", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.mark.parametrize(
    "field, value",
    [("prompt", "a\x00b"), ("prompt", "a\ud800b"), ("negative_prompt", "\x00"), ("webhook_url", "https://x/\x00")],
)
def test_nul_and_lone_surrogates_in_json_are_a_422_naming_the_field(app_client, new_key, field, value) -> None:
    _, key = new_key()
    body = json.dumps({**BODY, field: value})  # json.dumps escapes both as \\u0000 / \\ud800
    response = app_client.post("/v1/videos", content=body, headers={**bearer(key), "content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


def test_bad_text_in_paths_queries_and_webhook_bodies_is_a_4xx(app_client, new_key) -> None:
    _, key = new_key()
    assert app_client.get("/v1/videos/video_%00", headers=bearer(key)).status_code == 404
    assert app_client.get("/v1/videos/video_%ff%fe", headers=bearer(key)).status_code == 404
    query = app_client.get("/v1/videos?after=%00", headers=bearer(key))
    assert query.status_code == 422
    assert query.json()["error"]["param"] == "after"
    created = app_client.post(
        "/v1/webhook_endpoints",
        content=json.dumps({"url": "https://example.com/hook", "description": "\ud83d"}),
        headers={**bearer(key), "content-type": "application/json"},
    )
    assert created.status_code == 422
    assert created.json()["error"]["param"] == "description"


def test_an_empty_idempotency_key_is_refused(app_client, new_key) -> None:
    _, key = new_key()
    response = app_client.post("/v1/videos", json=BODY, headers={**bearer(key), "Idempotency-Key": ""})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "idempotency-key"


def _cursor(value: object, job_id: object) -> str:
    return base64.urlsafe_b64encode(json.dumps([value, job_id]).encode()).decode().rstrip("=")


def test_admin_cursors_and_filters_are_type_checked(app_client, new_key) -> None:
    _, admin_key = new_key("admin", admin=True)
    headers = bearer(admin_key)
    for query in [
        f"sort=attempts&cursor={_cursor('many', 'video_X')}",
        f"sort=model&cursor={_cursor(3, 'video_X')}",
        f"cursor={_cursor('video_X', 7)}",
        f"cursor={_cursor('a' + chr(0), 'video_X')}",
        "key=99999999999999999999",
        "key=-1",
        "cursor=%%%",
    ]:
        response = app_client.get(f"/admin/jobs?{query}", headers=headers)
        assert response.status_code == 422, (query, response.status_code)


def test_at_the_concurrency_limit_the_next_request_gets_503_and_retry_after() -> None:
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    edge = EdgeMiddleware(slow_app, max_body_bytes=1024, upload_max_bytes=1024, max_concurrency=1)

    async def call(path: str) -> list[dict]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": []}
        await edge(scope, receive, send)
        return sent

    async def scenario() -> tuple[list[dict], list[dict], list[dict]]:
        first = asyncio.create_task(call("/v1/videos"))
        await asyncio.sleep(0)  # the first request is inside the app now
        second = await call("/v1/videos")
        probe = asyncio.create_task(call("/healthz"))  # probes are never refused
        release.set()
        return await first, second, await probe

    first, second, probe = asyncio.run(scenario())
    assert first[0]["status"] == 204 and probe[0]["status"] == 204
    assert second[0]["status"] == 503
    assert (b"retry-after", b"1") in second[0]["headers"]
    assert edge.in_flight == 0


# ---- races on webhook endpoints ------------------------------------------------------------------


def _in_parallel(n: int, work: Callable[[int], object]) -> list[object]:
    results: list[object] = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # the test inspects what each thread got
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture
def owner(factory) -> ApiKey:
    with session_scope(factory) as session:
        return create_key(session=session, name="racer").record


def test_parallel_creates_respect_the_endpoint_cap(factory, owner: ApiKey) -> None:
    def create(i: int) -> str:
        with session_scope(factory) as session:
            key = session.get(ApiKey, owner.id)
            made = endpoints.create_endpoint(
                session=session,
                owner=key,
                url=f"https://example.com/{i}",
                events=None,
                description="",
                allowed_hosts=EXAMPLE,
            )
            return made.endpoint.id

    results = _in_parallel(30, create)
    with session_scope(factory) as session:
        stored = session.scalar(select(func.count()).where(WebhookEndpoint.owner_id == owner.id))
    assert stored == endpoints.MAX_ENDPOINTS
    assert sum(isinstance(r, str) for r in results) == endpoints.MAX_ENDPOINTS


def test_parallel_rotations_hand_out_only_secrets_that_sign(factory, owner: ApiKey) -> None:
    with session_scope(factory) as session:
        key = session.get(ApiKey, owner.id)
        endpoint_id = endpoints.create_endpoint(
            session=session,
            owner=key,
            url="https://example.com/r",
            events=None,
            description="",
            allowed_hosts=EXAMPLE,
        ).endpoint.id

    def rotate(_: int) -> str:
        with session_scope(factory) as session:
            key = session.get(ApiKey, owner.id)
            return endpoints.rotate_secret(session=session, owner=key, endpoint_id=endpoint_id).secret

    handed_out = _in_parallel(2, rotate)
    with session_scope(factory) as session:
        row = session.get(WebhookEndpoint, endpoint_id)
        signing = {row.secret, row.previous_secret}
    assert all(isinstance(s, str) for s in handed_out)
    assert set(handed_out) <= signing  # serialized: the second rotation's previous is the first's new


def test_a_deleted_endpoints_deliveries_stay_and_are_never_sent(app_client, factory, new_key) -> None:
    key_id, key = new_key()
    with session_scope(factory) as session:
        endpoint_id = endpoints.create_endpoint(
            session=session,
            owner=session.get(ApiKey, key_id),
            url="https://example.com/d",
            events=None,
            description="",
            allowed_hosts=EXAMPLE,
        ).endpoint.id
    job_id = app_client.post("/v1/videos", json=BODY, headers=bearer(key)).json()["id"]
    relay_now(app_client)
    with session_scope(factory) as session:
        pending = session.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)).all()
        assert pending, "the queued event made a delivery for the endpoint"
        ids = [d.id for d in pending]
    assert app_client.delete(f"/v1/webhook_endpoints/{endpoint_id}", headers=bearer(key)).status_code == 200
    with session_scope(factory) as session:
        kept = [session.get(WebhookDelivery, i) for i in ids]
        assert all(d is not None and d.endpoint_id is None for d in kept)
        assert {d.status for d in kept} == {"failed"}
        assert session.get(Job, job_id) is not None
    listed = app_client.get(f"/v1/videos/{job_id}/webhook_deliveries", headers=bearer(key))
    assert listed.status_code == 200
    redeliver = app_client.post(f"/v1/videos/{job_id}/webhook_deliveries/{ids[0]}/redeliver", headers=bearer(key))
    assert redeliver.status_code == 409


# ---- secrets in logs ----------------------------------------------------------------------------


def test_database_errors_never_carry_their_parameters(admin_settings: Settings, factory) -> None:
    engine = make_engine(admin_settings)
    try:
        assert engine.hide_parameters
    finally:
        engine.dispose()
    with pytest.raises(IntegrityError) as raised, session_scope(factory) as session:
        session.add(WebhookEndpoint(id="we_dup", owner_id=2**30, url="https://x", secret="whsec_TOPSECRET"))
        session.flush()
    assert "TOPSECRET" not in str(raised.value)


# ---- throughput: constant queries, bounded streams ----------------------------------------------


BACKGROUND_THREADS = ("vidq-relay", "vidq-sweeper")  # the process's own work, not the request's


def _request_statements(app_client: TestClient, call: Callable[[], object]) -> tuple[list[str], int]:
    """(statements, pool checkouts) that ``call``'s requests made (the relay's are not theirs)."""
    engine = app_client.app.state.vidq.session_factory.kw["bind"]
    seen: list[str] = []
    checkouts: list[str] = []

    def record(conn, cursor, statement, *args) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread().name not in BACKGROUND_THREADS:
            seen.append(statement)

    def checkout(*args) -> None:  # type: ignore[no-untyped-def]
        if threading.current_thread().name not in BACKGROUND_THREADS:
            checkouts.append(threading.current_thread().name)

    event.listen(engine, "before_cursor_execute", record)
    event.listen(engine.pool, "checkout", checkout)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", record)
        event.remove(engine.pool, "checkout", checkout)
    return seen, len(checkouts)


def _count_statements(app_client: TestClient, call: Callable[[], object]) -> int:
    return len(_request_statements(app_client, call)[0])


def test_a_submit_costs_one_connection_and_two_statements_whatever_the_backlog(app_client, new_key) -> None:
    _, key = new_key()

    def submit() -> None:
        assert app_client.post("/v1/videos", json=BODY, headers=bearer(key)).status_code == 202

    submit()  # the key is looked up once, then taken from the process's key cache
    first, first_checkouts = _request_statements(app_client, submit)
    for _ in range(10):
        submit()
    later, later_checkouts = _request_statements(app_client, submit)
    # The job (its INSERT returns its queue's depth: its position, no count of the backlog) and its
    # event (its INSERT carries the depth counter's +1); Core INSERTs (jobs.inserts), no unit-of-work flush.
    mains = [s.split(")\n ", 1)[1] if s.startswith("WITH ") else s for s in later]  # after a WITH clause
    verbs = [" ".join(re.findall(r"^(\w+)[^;]*?\b(?:INTO|FROM)\s+(\w+)", s, re.DOTALL)[0]) for s in mains]
    assert verbs == ["INSERT jobs", "INSERT job_events"]
    assert "queue_depths" in later[0]  # the depth, read by the job's INSERT
    assert re.match(r"WITH queue_depth_change AS\s*\(INSERT INTO queue_depths", later[1])  # counted by the event's
    assert len(first) == len(later) and first_checkouts == later_checkouts == 1


def test_reads_beyond_the_route_threads_never_wait_for_a_connection(admin_settings, new_key) -> None:
    """Two route threads, a pool of three connections (two plus the relay's) and 32 concurrent reads:
    a request gives its connection back in its route thread, before its answer is validated (which
    takes another trip to a thread), so no read ever waits for the pool behind reads that wait for
    a thread. (Holding it until the teardown, every connection sat with a request queued for a
    thread while every thread waited for a connection, until the pool timed out: 503.)"""
    _, key = new_key()
    settings = admin_settings.model_copy(update={"api_threads": 2, "db_pool_size": 3, "api_key_cache_s": 0})
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.02)
        base = f"http://127.0.0.1:{port}"
        job_id = httpx.post(f"{base}/v1/videos", json=BODY, headers=bearer(key)).json()["id"]

        async def read_all() -> list[int]:
            async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=60) as client:
                answers = await asyncio.gather(*(client.get(f"/v1/videos/{job_id}") for _ in range(32)))
            return [answer.status_code for answer in answers]

        assert asyncio.run(read_all()) == [200] * 32
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_revoked_key_is_refused_at_once_by_the_process_that_revoked_it(app_client, new_key) -> None:
    key_id, key = new_key()
    _, admin_key = new_key("ops", admin=True)
    assert app_client.get("/v1/videos", headers=bearer(key)).status_code == 200  # now in the key cache
    revoked = app_client.post(f"/admin/keys/{key_id}/revoke", headers=bearer(admin_key), follow_redirects=False)
    assert revoked.status_code == 303
    assert app_client.get("/v1/videos", headers=bearer(key)).status_code == 401


def test_a_key_revoked_elsewhere_is_refused_once_the_cache_interval_is_over(factory, new_key) -> None:
    key_id, key = new_key()
    now = [0.0]
    cache = KeyCache(1.0, clock=lambda: now[0])
    with factory() as session:
        assert authenticate(session=session, plaintext=key, cache=cache).id == key_id
    with factory() as session:  # another API process revokes it: this process hears nothing
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
        session.commit()
    with factory() as session:
        assert authenticate(session=session, plaintext=key, cache=cache).id == key_id  # within the interval
    now[0] = 1.0
    with factory() as session, pytest.raises(Unauthenticated):
        authenticate(session=session, plaintext=key, cache=cache)
    with factory() as session, pytest.raises(Unauthenticated):  # forgotten by every request after it
        authenticate(session=session, plaintext=key, cache=cache)


def test_an_expired_key_is_looked_up_by_one_request_while_the_others_keep_the_copy(factory, new_key) -> None:
    key_id, key = new_key()
    now = [0.0]
    cache = KeyCache(1.0, clock=lambda: now[0])
    with factory() as session:
        authenticate(session=session, plaintext=key, cache=cache)
    now[0] = 1.0
    with factory() as session:
        assert cache.known(key, session=session) is None  # this request looks it up again...
        assert cache.known(key, session=session).id == key_id  # ...the next ones meanwhile keep the copy
        assert authenticate(session=session, plaintext=key, cache=cache).id == key_id  # the lookup
    now[0] = 1.5
    with factory() as session:
        assert cache.known(key, session=session).id == key_id  # a new interval from the lookup
    now[0] = 5.0
    with factory() as session:  # a lookup that never finished: the copy ends after the grace
        assert cache.known(key, session=session) is None
    now[0] = 6.5
    with factory() as session:
        assert cache.known(key, session=session) is None


def test_a_list_page_costs_the_same_queries_whatever_its_size(app_client, new_key) -> None:
    _, key = new_key()
    for _ in range(2):
        assert app_client.post("/v1/videos", json=BODY, headers=bearer(key)).status_code == 202
    small = _count_statements(app_client, lambda: app_client.get("/v1/videos?limit=100", headers=bearer(key)))
    for _ in range(8):
        assert app_client.post("/v1/videos", json=BODY, headers=bearer(key)).status_code == 202
    page = app_client.get("/v1/videos?limit=100", headers=bearer(key)).json()["data"]
    large = _count_statements(app_client, lambda: app_client.get("/v1/videos?limit=100", headers=bearer(key)))
    assert large == small
    positions = sorted(v["queue_position"] for v in page)
    assert positions == sorted({p for p in positions}) and len(positions) == 10  # distinct, one per queued job
    single = app_client.get(f"/v1/videos/{page[0]['id']}", headers=bearer(key)).json()
    assert single["queue_position"] == page[0]["queue_position"]


def test_a_key_at_its_stream_cap_gets_429(app_client, new_key) -> None:
    key_id, key = new_key()
    job_id = app_client.post("/v1/videos", json=BODY, headers=bearer(key)).json()["id"]
    state = app_client.app.state.vidq
    limit = state.settings.max_streams_per_key
    for _ in range(limit):
        state.streams.acquire(key_id, limit)
    try:
        refused = app_client.get(f"/v1/videos/{job_id}/events", headers=bearer(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
    finally:
        for _ in range(limit):
            state.streams.release(key_id)
    assert state.streams.open(key_id) == 0


def test_an_admin_key_at_its_dashboard_stream_cap_gets_429_and_a_finished_stream_frees_its_slot(
    app_client, new_key
) -> None:
    admin_id, admin_key = new_key("ops", admin=True)
    state = app_client.app.state.vidq
    limit = state.settings.max_streams_per_key
    for _ in range(limit):
        state.admin_streams.acquire(admin_id, limit)
    try:
        refused = app_client.get("/admin/jobs/live?ids=video_gone", headers=bearer(admin_key))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_streams"
        assert state.streams.open(admin_id) == 0  # the /v1 streams' count is its own
    finally:
        for _ in range(limit):
            state.admin_streams.release(admin_id)
    ended = app_client.get("/admin/jobs/live?ids=video_gone", headers=bearer(admin_key))  # no such job: ends
    assert ended.status_code == 200 and "event: done" in ended.text
    assert state.admin_streams.open(admin_id) == 0


def test_a_stream_ends_at_its_lifetime_and_closes_its_source() -> None:
    closed: list[bool] = []
    now = [0.0]

    async def endless():  # type: ignore[no-untyped-def]
        try:
            while True:
                now[0] += 10.0  # each item (a heartbeat) comes 10 s after the last
                yield None
        finally:
            closed.append(True)

    async def collect() -> int:
        return len([item async for item in bounded(endless(), lifetime_s=35.0, clock=lambda: now[0])])

    assert asyncio.run(collect()) == 4  # at 10, 20, 30 s; the one at 40 s is past the lifetime and ends it
    assert closed == [True]
