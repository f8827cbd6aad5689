"""`GET /v1/videos/{id}/events` over real HTTP with real Redis: event ids are the job's event numbers,
and a client that reconnects with `Last-Event-ID` gets every state change it missed, exactly once.

The worker's side (claims, progress, requeue, completion) is played in this process by the same
domain functions a worker calls; the API's relay fans each committed change out, as in production.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from jobs import lifecycle
from jobs.attempts import AttemptOutcome
from jobs.broker import redis_client
from jobs.db import make_engine, make_session_factory, session_scope
from jobs.events import NullEventBus, ProgressEvent, RedisEventBus
from jobs.execution import claim_job, complete_owned, record_progress
from jobs.keys import create_key
from jobs.models import Job
from jobs.settings import Settings
from vidq.embedded import free_port

BODY = {"prompt": "a heron at dawn", "model": "tiny-wan", "num_inference_steps": 4}
Frame = tuple[int | None, str, dict[str, Any]]  # (id, event, data)


@pytest.fixture(scope="module")
def stream_settings(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        data_dir=tmp_path_factory.mktemp("events-data"),
        sweeper_enabled=False,  # the relay still runs; nothing is repaired behind the test's back
        sse_heartbeat_s=0.3,
        secret_key="events-test-secret",
    )


@pytest.fixture(scope="module")
def server(stream_settings: Settings) -> Iterator[tuple[str, Any]]:
    """The app on loopback (streams need real HTTP); yields its URL and its state."""
    app = create_app(stream_settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the API server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{server.config.port}", app.state.vidq
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def factory(stream_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(stream_settings)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def client(server: tuple[str, Any], factory: sessionmaker[Session]) -> Iterator[httpx.Client]:
    with session_scope(factory) as session:
        key = create_key(session=session, name="client").plaintext
    with httpx.Client(base_url=server[0], headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        yield http


def frames(response: httpx.Response) -> Iterator[Frame]:
    frame_id, event, data = None, "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield frame_id, event, json.loads("\n".join(data))
            frame_id, event, data = None, "message", []
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id":
                frame_id = int(value)
            elif field == "event":
                event = value
            elif field == "data":
                data.append(value)


def in_worker(factory: sessionmaker[Session], change) -> None:  # type: ignore[no-untyped-def]
    with session_scope(factory) as session:
        change(session)


def test_a_client_that_reconnects_with_last_event_id_sees_each_state_change_once(
    client: httpx.Client, factory: sessionmaker[Session], stream_settings: Settings
) -> None:
    job_id = client.post("/v1/videos", json=BODY).json()["id"]
    bus = RedisEventBus(redis_client(stream_settings.redis_url))
    seen: list[Frame] = []

    with client.stream("GET", f"/v1/videos/{job_id}/events") as response:
        stream = frames(response)
        seen.append(next(stream))  # the whole job, as event 1
        in_worker(factory, lambda s: claim_job(session=s, job_id=job_id, worker_id="w1"))
        seen.append(next(stream))  # its start, relayed live
        bus.publish(job_id, ProgressEvent.at(job_id=job_id, stage="denoising", step=1, total_steps=4))
        seen.append(next(stream))
    assert [(f[0], f[1], f[2]["status"]) for f in seen] == [
        (1, "state", "queued"),
        (2, "status", "in_progress"),
        (None, "progress", "in_progress"),
    ]

    # Disconnected: the worker is lost, the job requeued and started again, and steps go by unheard.
    def lose_and_restart(session: Session) -> None:
        job = session.get(Job, job_id, with_for_update=True)
        lifecycle.requeue(session=session, job=job, reason="w1 lost", attempt_outcome=AttemptOutcome.LOST)

    in_worker(factory, lose_and_restart)
    in_worker(factory, lambda s: claim_job(session=s, job_id=job_id, worker_id="w2"))
    in_worker(
        factory,
        lambda s: record_progress(
            session=s, job_id=job_id, worker_id="w2", stage="denoising", step=3, total_steps=4, progress=69
        ),
    )

    resumed: list[Frame] = []
    with client.stream("GET", f"/v1/videos/{job_id}/events", headers={"Last-Event-ID": "2"}) as response:
        stream = frames(response)
        resumed += [next(stream), next(stream), next(stream)]  # the two missed changes, then where it is
        in_worker(
            factory,
            lambda s: complete_owned(
                session=s,
                job_id=job_id,
                worker_id="w2",
                video_key="v",
                thumbnail_key="t",
                stage_timings={"denoising": 0.5},
                result_ttl_s=60,
            ),
        )
        resumed += list(stream)  # ends after the final status
    assert [(f[0], f[1], f[2]["status"]) for f in resumed] == [
        (3, "status", "queued"),
        (4, "status", "in_progress"),
        (None, "progress", "in_progress"),
        (5, "status", "completed"),
    ]
    assert resumed[2][2]["step"] == 3 and resumed[3][2]["stage_timings"] == {"denoising": 0.5}

    with client.stream("GET", f"/v1/videos/{job_id}/events", headers={"Last-Event-ID": "5"}) as response:
        assert list(frames(response)) == []  # nothing missed, and the job is over


def test_a_change_whose_live_message_is_lost_still_arrives(
    client: httpx.Client, factory: sessionmaker[Session], server: tuple[str, Any], monkeypatch
) -> None:
    job_id = client.post("/v1/videos", json=BODY).json()["id"]
    monkeypatch.setattr(server[1].sweeper.relay, "bus", NullEventBus())  # the relay publishes nothing live
    with client.stream("GET", f"/v1/videos/{job_id}/events") as response:
        stream = frames(response)
        assert next(stream)[0] == 1
        with session_scope(factory) as session:
            lifecycle.cancel(session=session, job=session.get(Job, job_id, with_for_update=True))
        assert [(f[0], f[2]["status"]) for f in stream] == [(2, "cancelled")]  # read from the table
