"""The REST contract that lets OpenAI's SDK (and people used to its API) talk to vidq: multipart bodies,
`seconds`, OpenAI sizes, `/v1/models`, list order and pages, the SDK's webhook-endpoint field names,
unsupported endpoints, error types, the poll hint, and the OpenAPI document. PostgreSQL, no worker:
jobs stay queued."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from jobs.catalog import request_bounds
from jobs.settings import Settings
from spec.registry import list_specs
from tests.api.conftest import bearer

TINY = {"prompt": "a lighthouse in a storm", "model": "tiny-wan", "size": "96x64", "num_inference_steps": 2}
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module")
def app_client(admin_settings: Settings) -> Iterator[TestClient]:
    """The app on PostgreSQL, with loopback allowed as a webhook target (nothing is delivered: no worker)."""
    settings = admin_settings.model_copy(update={"webhook_allowed_hosts": "127.0.0.1:*"})
    with TestClient(create_app(settings)) as client:
        yield client


def form(fields: dict[str, object]) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items()}


def multipart(parts: list[tuple[str, str]], boundary: str = "vidq-test") -> tuple[bytes, str]:
    """A multipart/form-data body of text parts only, as OpenAI's SDK sends one with no file."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in parts
    )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_creates_a_video_like_json_does(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    # Text parts, a list as repeated `name[]` parts, seconds as a string: what the SDK sends.
    body, content_type = multipart(
        [
            *form(TINY).items(),
            ("seconds", "1.125"),
            ("webhook_url", "http://127.0.0.1:9/hook"),
            ("webhook_events[]", "video.completed"),
            ("webhook_events[]", "video.failed"),
        ]
    )
    response = app_client.post("/v1/videos", content=body, headers={**bearer(key), "Content-Type": content_type})
    assert response.status_code == 202, response.text
    video = response.json()
    assert (video["num_frames"], video["fps"], video["seconds"]) == (9, 8, "1.125")
    assert video["size"] == "96x64" and video["webhook_events"] == ["video.completed", "video.failed"]
    assert app_client.get(f"/v1/videos/{video['id']}", headers=bearer(key)).json()["seconds"] == "1.125"

    bad, content_type = multipart([("prompt", "a cat"), ("num_frames", "many")])
    refused = app_client.post("/v1/videos", content=bad, headers={**bearer(key), "Content-Type": content_type})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "num_frames"


def test_an_image_for_a_text_only_model_is_refused_naming_input_reference(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    as_file = app_client.post(
        "/v1/videos", data=form(TINY), files={"input_reference": ("ref.png", PNG_1PX, "image/png")}, headers=bearer(key)
    )
    data_url = "data:image/png;base64," + base64.b64encode(PNG_1PX).decode()
    as_json = app_client.post("/v1/videos", json={**TINY, "input_reference": data_url}, headers=bearer(key))
    as_object = app_client.post(
        "/v1/videos", json={**TINY, "input_reference": {"image_url": data_url}}, headers=bearer(key)
    )
    for response in (as_file, as_json, as_object):
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "input_reference" and "tiny-wan" in error["message"]
    remote = app_client.post(
        "/v1/videos", json={**TINY, "input_reference": "https://example.com/cat.png"}, headers=bearer(key)
    )
    assert remote.status_code == 422 and "data: URL" in remote.json()["error"]["message"]
    assert app_client.get("/v1/videos", headers=bearer(key)).json()["data"] == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", None])
def test_other_content_types_get_415_saying_what_is_accepted(app_client: TestClient, new_key, content_type) -> None:
    _, key = new_key()
    headers = bearer(key) | ({"Content-Type": content_type} if content_type else {})
    response = app_client.post("/v1/videos", content=b"prompt=a cat", headers=headers)
    assert response.status_code == 415
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type" and error["type"] == "invalid_request_error"
    assert "application/json" in error["message"] and "multipart/form-data" in error["message"]


@pytest.mark.parametrize(
    ("fields", "param", "fragment"),
    [
        ({"seconds": "8"}, "seconds", "0.625 to 4.125 seconds"),  # tiny-wan: 5..33 frames at 8 fps
        ({"seconds": "1.125", "num_frames": 17}, "seconds", "9 frames"),
        ({"seconds": "soon"}, "seconds", ""),
        ({"seconds": "0"}, "seconds", ""),
        ({"size": "1792x1024"}, "size", "96x64"),
    ],
)
def test_seconds_and_sizes_outside_the_model_get_422(app_client: TestClient, new_key, fields, param, fragment) -> None:
    _, key = new_key()
    response = app_client.post("/v1/videos", json={**TINY, **fields}, headers=bearer(key))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_seconds_as_a_number_maps_to_the_nearest_frame_count(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    video = app_client.post("/v1/videos", json={**TINY, "seconds": 2}, headers=bearer(key)).json()
    assert (video["num_frames"], video["seconds"]) == (17, "2.125")  # 16 frames asked: 17 is the nearest 4k+1


def test_the_real_checkpoints_serve_openais_720p_sizes(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    for model in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b"):
        for size in ("1280x720", "720x1280"):
            body = {"prompt": "a harbour at dawn", "model": model, "size": size, "seconds": "4"}
            response = app_client.post("/v1/videos", json=body, headers=bearer(key))
            assert response.status_code == 202, response.text
            assert (response.json()["num_frames"], response.json()["seconds"]) == (65, "4.062")


def test_models_are_listed_with_their_facts(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    listed = app_client.get("/v1/models", headers=bearer(key)).json()
    assert listed["object"] == "list"
    by_id = {m["id"]: m for m in listed["data"]}
    assert set(by_id) >= {"tiny-wan", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b"}
    big = app_client.get("/v1/models/wan2.1-t2v-14b", headers=bearer(key)).json()
    assert big == by_id["wan2.1-t2v-14b"]
    assert big["object"] == "model" and big["owned_by"] == "vidq"
    assert big["openai_sizes"] == ["720x1280", "1280x720"] and "832x480" in big["sizes"]
    assert big["frames"]["min"] == 5 and big["frames"]["max"] == 81 and big["frames"]["step"] == 4
    assert big["frames"]["allowed"][:3] == [5, 9, 13] and big["seconds_range"] == ["0.312", "5.062"]
    assert (big["default_fps"], big["default_steps"], big["takes_image"]) == (16, 50, False)
    assert big["gpu_memory"]["default_request_gib"] > big["gpu_memory"]["minimum_gib"] > 0
    assert by_id["tiny-wan"]["gpu_memory"] is None and by_id["tiny-wan"]["openai_sizes"] == []
    missing = app_client.get("/v1/models/sora-2", headers=bearer(key))
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert app_client.get("/v1/models").status_code == 401


def test_video_lists_take_an_order(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    ids = [app_client.post("/v1/videos", json=TINY, headers=bearer(key)).json()["id"] for _ in range(3)]
    oldest = app_client.get("/v1/videos?order=asc&limit=2", headers=bearer(key)).json()
    assert [v["id"] for v in oldest["data"]] == ids[:2] and oldest["has_more"] is True
    rest = app_client.get(f"/v1/videos?order=asc&limit=2&after={oldest['last_id']}", headers=bearer(key)).json()
    assert [v["id"] for v in rest["data"]] == ids[2:] and rest["has_more"] is False
    newest = app_client.get("/v1/videos?order=desc", headers=bearer(key)).json()
    assert [v["id"] for v in newest["data"]] == ids[::-1]
    bad = app_client.get("/v1/videos?order=sideways", headers=bearer(key))
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "order"


def test_webhook_endpoints_page_like_videos_and_speak_the_sdks_field_names(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    created = []
    for i in range(3):
        response = app_client.post(
            "/v1/webhook_endpoints",
            json={"url": f"http://127.0.0.1:9/hook/{i}", "event_types": ["video.completed"], "name": f"hook {i}"},
            headers=bearer(key),
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    first = created[0]
    assert first["event_types"] == first["events"] == ["video.completed"]
    assert first["name"] == first["description"] == "hook 0"
    assert first["signing_secret"] == first["secret"] and first["secret"].startswith("whsec_")
    assert first["signing_secret_hint"].endswith(first["secret"][-4:])
    ids = [e["id"] for e in created]

    page = app_client.get("/v1/webhook_endpoints?limit=2", headers=bearer(key)).json()
    assert [e["id"] for e in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    assert (page["first_id"], page["last_id"]) == (ids[2], ids[1]) and "secret" not in page["data"][0]
    rest = app_client.get(f"/v1/webhook_endpoints?limit=2&after={page['last_id']}", headers=bearer(key)).json()
    assert [e["id"] for e in rest["data"]] == ids[:1] and rest["has_more"] is False
    oldest = app_client.get("/v1/webhook_endpoints?order=asc", headers=bearer(key)).json()
    assert [e["id"] for e in oldest["data"]] == ids

    default = app_client.post(
        "/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/all"}, headers=bearer(key)
    ).json()
    assert default["events"] is None and "video.completed" in default["event_types"]
    assert "video.progress" not in default["event_types"]  # progress only when named
    clash = app_client.post(
        "/v1/webhook_endpoints",
        json={"url": "http://127.0.0.1:9/x", "events": ["video.failed"], "event_types": ["video.completed"]},
        headers=bearer(key),
    )
    assert clash.status_code == 422 and clash.json()["error"]["param"] == "event_types"


@pytest.mark.parametrize(
    ("method", "path", "named"),
    [
        ("POST", "/v1/videos/video_x/remix", "remixing"),
        ("POST", "/v1/videos/edits", "editing"),
        ("POST", "/v1/videos/extensions", "extending"),
        ("POST", "/v1/videos/characters", "characters"),
        ("GET", "/v1/videos/characters/char_x", "characters"),
        ("POST", "/v1/webhook_endpoints/we_x", "updating a webhook endpoint"),
        ("POST", "/v1/webhook_endpoints/we_x/test", "test deliveries"),
    ],
)
def test_unsupported_endpoints_say_so(app_client: TestClient, new_key, method: str, path: str, named: str) -> None:
    _, key = new_key()
    response = app_client.request(method, path, json={}, headers=bearer(key))
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unsupported_endpoint" and error["type"] == "not_found_error"
    assert named in error["message"] and "vidq does not support" in error["message"]


def test_errors_carry_openais_type(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    assert app_client.get("/v1/videos").json()["error"]["type"] == "authentication_error"
    assert app_client.get("/v1/videos/video_x", headers=bearer(key)).json()["error"]["type"] == "not_found_error"
    invalid = app_client.post("/v1/videos", json={**TINY, "num_frames": 8}, headers=bearer(key)).json()["error"]
    assert invalid["type"] == "invalid_request_error" and invalid["param"] == "num_frames"
    job = app_client.post("/v1/videos", json=TINY, headers=bearer(key)).json()
    not_ready = app_client.get(f"/v1/videos/{job['id']}/content", headers=bearer(key)).json()["error"]
    assert not_ready["type"] == "conflict_error" and not_ready["code"] == "not_ready"


def test_unfinished_jobs_tell_pollers_when_to_look_again(app_client: TestClient, new_key) -> None:
    _, key = new_key()
    created = app_client.post("/v1/videos", json=TINY, headers=bearer(key))
    job_id = created.json()["id"]
    read = app_client.get(f"/v1/videos/{job_id}", headers=bearer(key))
    assert read.json()["status"] == "queued" and read.headers["openai-poll-after-ms"] == "1000"  # no ETA yet
    assert created.headers["openai-poll-after-ms"] == "1000"
    app_client.post(f"/v1/videos/{job_id}/cancel", headers=bearer(key))
    assert "openai-poll-after-ms" not in app_client.get(f"/v1/videos/{job_id}", headers=bearer(key)).headers


def test_openapi_documents_the_real_error_body_statuses_and_limits(app_client: TestClient) -> None:
    schema = app_client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components and "ErrorResponse" in components
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (method, path, status)
            if path.startswith("/v1/") and "unsupported" not in operation["operationId"]:
                assert "401" in operation["responses"], (method, path)
    create = schema["paths"]["/v1/videos"]["post"]
    assert set(create["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"202", "401", "415", "422"} <= set(create["responses"])
    assert {"302", "404", "409", "410"} <= set(schema["paths"]["/v1/videos/{video_id}/content"]["get"]["responses"])
    fields = components["VideoCreate"]["properties"]
    steps = fields["num_inference_steps"]["anyOf"][0]
    assert (steps["minimum"], steps["maximum"]) == (1, 200)
    guidance = fields["guidance_scale"]["anyOf"][0]
    assert (guidance["minimum"], guidance["maximum"]) == (0, 20)
    frames = fields["num_frames"]["anyOf"][0]
    bounds = request_bounds()  # the widest range over the registry's models
    assert (frames["minimum"], frames["maximum"]) == (bounds.min_frames, bounds.max_frames)
    assert fields["prompt"]["maxLength"] == bounds.max_prompt_chars
    assert components["VideoCreateForm"]["properties"]["input_reference"]["anyOf"][0]["format"] == "binary"
    limit = next(p for p in schema["paths"]["/v1/videos"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)


def test_docs_pages_use_only_assets_the_app_serves(app_client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = app_client.get(page).text
        assert not re.search(r"(src|href)=[\"']https?://", html), page
        assert not re.search(r"url\s*:\s*[\"']https?://|cdn", html, re.IGNORECASE), page
        for asset in re.findall(r"(?:src|href)=[\"'](/static/docs/[^\"']+)", html):
            assert app_client.get(asset).status_code == 200, asset
    assert app_client.get("/static/docs/swagger-ui/LICENSE").status_code == 200
    assert app_client.get("/static/docs/redoc/LICENSE").status_code == 200


def test_an_image_to_video_model_without_an_image_is_refused_naming_input_reference(
    app_client: TestClient, new_key
) -> None:
    _, key = new_key()
    needs_image = next(spec for spec in list_specs() if spec.image_input == "required")
    body = {"prompt": "the same scene, moving", "model": needs_image.name}
    response = app_client.post("/v1/videos", json=body, headers=bearer(key))
    assert response.status_code == 422 and response.json()["error"]["param"] == "input_reference"
    listed = app_client.get(f"/v1/models/{needs_image.name}", headers=bearer(key)).json()
    assert listed["takes_image"] is True


def test_multipart_lists_of_objects_arrive_as_the_sdk_encodes_them(app_client: TestClient, new_key) -> None:
    from tests.api.test_loras import adapter_bytes, upload

    _, key = new_key()
    first = upload(app_client, key, adapter_bytes(), num_inference_steps=2).json()["id"]
    second = upload(app_client, key, adapter_bytes(seed=1)).json()["id"]
    # extra_body={"loras": [{"id": ..., "scale": 0.5}, {"id": ...}]} in the SDK's multipart encoding
    body, content_type = multipart(
        [
            ("prompt", "a fox"),
            ("model", "tiny-wan"),
            ("loras[][id]", first),
            ("loras[][scale]", "0.5"),
            ("loras[][id]", second),
        ]
    )
    response = app_client.post("/v1/videos", content=body, headers={**bearer(key), "Content-Type": content_type})
    assert response.status_code == 202, response.text
    assert [(lora["id"], lora["scale"]) for lora in response.json()["loras"]] == [(first, 0.5), (second, 1.0)]
