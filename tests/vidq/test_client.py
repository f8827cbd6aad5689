"""The client's transport against a scripted HTTP server on loopback: retries, the automatic
Idempotency-Key, typed errors and the polling fallback when there is no event stream."""

from __future__ import annotations

import json

import pytest

from tests.receiver import Answer, Receiver
from vidq.client import Client, InvalidRequestError, RateLimitError, ServerError, iter_sse


def job(status: str, **fields: object) -> Answer:
    return Answer(200, json.dumps({"id": "video_1", "status": status, "progress": 0, **fields}).encode())


def test_idempotent_calls_are_retried_on_429_and_5xx_with_one_idempotency_key(receiver: Receiver) -> None:
    receiver.answer(Answer(503, b"{}"), Answer(429, b"{}", {"Retry-After": "0"}), Answer(202, job("queued").body))
    with Client(receiver.url, "vq_test", backoff_s=0.01) as client:
        assert client.create("a cat")["status"] == "queued"
    requests = receiver.requests
    assert [r.method for r in requests] == ["POST"] * 3
    keys = {r.headers["idempotency-key"] for r in requests}
    assert len(keys) == 1 and keys.pop().startswith("vidq-client-")  # a retry cannot make a second job
    assert requests[0].headers["authorization"] == "Bearer vq_test"


def test_retries_stop_after_max_retries_with_a_typed_error(receiver: Receiver) -> None:
    receiver.default = Answer(500, json.dumps({"error": {"code": "internal_error", "message": "x"}}).encode())
    with Client(receiver.url, "vq_test", max_retries=2, backoff_s=0.01) as client, pytest.raises(ServerError) as error:
        client.retrieve("video_1")
    assert error.value.code == "internal_error" and len(receiver.requests) == 3


def test_client_errors_are_not_retried_and_carry_the_api_error(receiver: Receiver) -> None:
    body = {"error": {"code": "invalid_parameter", "message": "size: not allowed", "param": "size"}}
    receiver.answer(Answer(422, json.dumps(body).encode()), Answer(429, b"{}"))
    with Client(receiver.url, "vq_test", max_retries=0) as client:
        with pytest.raises(InvalidRequestError) as invalid:
            client.create("a cat", size="1x1")
        assert (invalid.value.param, invalid.value.message, invalid.value.status_code) == (
            "size",
            "size: not allowed",
            422,
        )
        with pytest.raises(RateLimitError):
            client.list()
    assert len(receiver.requests) == 2


def test_waiting_falls_back_to_polling_without_an_event_stream(receiver: Receiver) -> None:
    receiver.answer(
        Answer(202, job("queued").body),  # POST /v1/videos
        Answer(502, b"no streams here"),  # GET .../events, as from a buffering proxy
        job("in_progress", progress=40),
        job("completed", progress=100),
        job("completed", progress=100),
    )
    seen: list[dict] = []
    with Client(receiver.url, "vq_test", max_retries=0) as client:
        video = client.create_and_wait("a cat", on_progress=seen.append, poll_interval=0.01)
    assert video["status"] == "completed"
    assert [s["status"] for s in seen] == ["in_progress", "completed"]
    assert [r.path for r in receiver.requests][:3] == ["/v1/videos", "/v1/videos/video_1/events", "/v1/videos/video_1"]


def test_sse_parsing_skips_heartbeats_and_joins_data_lines() -> None:
    lines = [": heartbeat", "", "id: 1", "event: state", 'data: {"status":', 'data: "queued"}', "", ": heartbeat", ""]
    assert list(iter_sse(iter(lines))) == [("state", {"status": "queued"})]


def test_vidq_loras_add_uploads_the_file_with_its_settings(receiver: Receiver, tmp_path, capsys) -> None:
    from vidq.cli import main

    path = tmp_path / "distill.safetensors"
    path.write_bytes(b"adapter-bytes")
    lora = {"id": "lora_1", "format": "wan", "rank": 64}
    receiver.answer(Answer(201, json.dumps(lora).encode()))
    argv = ["loras", "add", str(path), "--name", "distill", "--model", "wan2.1-t2v-1.3b", "--steps", "4"]
    assert main([*argv, "--guidance", "1", "--base-url", receiver.url, "--api-key", "vq_test"]) == 0
    (request,) = receiver.requests
    assert (request.method, request.path) == ("POST", "/v1/loras")
    assert request.headers["content-type"].startswith("multipart/form-data")
    for part in (b'name="name"\r\n\r\ndistill', b'name="model"\r\n\r\nwan2.1-t2v-1.3b', b"adapter-bytes"):
        assert part in request.body
    assert (
        b'name="num_inference_steps"\r\n\r\n4' in request.body and b'name="guidance_scale"\r\n\r\n1.0' in request.body
    )
    assert json.loads(capsys.readouterr().out) == lora


def test_list_passes_the_order(receiver: Receiver) -> None:
    receiver.answer(Answer(200, json.dumps({"object": "list", "data": [], "has_more": False}).encode()))
    with Client(receiver.url, "vq_test", max_retries=0) as client:
        assert client.list(limit=2, order="asc")["data"] == []
    assert receiver.requests[0].path == "/v1/videos?limit=2&order=asc"
