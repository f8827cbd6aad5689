"""PostgreSQL faults: stopped while messages are delivered, connections reset mid-render."""

from __future__ import annotations

import threading

import httpx

from tests.faults.conftest import Stack, assert_completed_exactly_once, submit, wait_for_log, wait_until_published


def test_jobs_delivered_while_postgres_is_stopped_are_all_completed(
    stack: Stack, client: httpx.Client, start_worker
) -> None:
    worker = start_worker()
    worker.pause()  # holds its broker connection; the six messages wait for it
    ids = submit(client, 6)
    wait_until_published(stack, ids)  # in the broker before the database goes: the case is delivery
    stack.postgres.stop()
    try:
        # The API says which dependency is down, on the same kept-alive connection, and stays usable.
        for response in (client.get(f"/v1/videos/{ids[0]}"), client.post("/v1/videos", json={"prompt": "x"})):
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            assert response.json()["error"]["param"] == "database"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["param"] == "database"

        worker.resume()  # takes the messages while every claim fails
        wait_for_log(worker, "database unavailable")
    finally:
        stack.postgres.start()
    assert_completed_exactly_once(stack, ids)
    assert client.get(f"/v1/videos/{ids[0]}").status_code == 200  # the same connection, healthy again


def test_connection_resets_mid_render_fail_no_job(stack: Stack, client: httpx.Client, start_worker) -> None:
    start_worker()
    ids = submit(client, 10, num_inference_steps=2)
    done = threading.Event()

    def reset_connections() -> None:
        while not done.wait(0.25):
            stack.postgres.terminate_connections(stack.database)

    resetter = threading.Thread(target=reset_connections, daemon=True)
    resetter.start()
    try:
        assert_completed_exactly_once(stack, ids)
    finally:
        done.set()
        resetter.join(timeout=5)
