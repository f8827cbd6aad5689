"""/v1/loras and the `loras` of /v1/videos, through the HTTP API (PostgreSQL, local storage)."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import save

from engine.lora.synthetic import random_adapter
from spec.lora_keys import DIT_SHAPES, DiTShape
from tests.api.conftest import bearer, login

TINY = DIT_SHAPES["tiny-wan"]


def adapter_bytes(dit: DiTShape = TINY, fmt: str = "wan", seed: int = 0) -> bytes:
    return save(random_adapter(dit, 4, fmt, seed=seed))


def upload(client, key: str, data: bytes, **form) -> object:  # type: ignore[no-untyped-def]
    fields = {
        "name": "style",
        "model": "tiny-wan",
        **{k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in form.items()},
    }
    return client.post(
        "/v1/loras",
        headers=bearer(key),
        data=fields,
        files={"file": ("a.safetensors", data, "application/octet-stream")},
    )


@pytest.fixture
def client_key(new_key) -> str:
    return new_key("lora-client")[1]


def test_upload_list_read_and_delete_are_scoped_to_the_client(app_client, client_key, new_key) -> None:
    created = upload(app_client, client_key, adapter_bytes(), num_inference_steps=4, guidance_scale=1.0)
    assert created.status_code == 201, created.text
    lora = created.json()
    assert (lora["object"], lora["format"], lora["rank"], lora["model"]) == ("lora", "wan", 4, "tiny-wan")
    assert lora["recommended"] == {"num_inference_steps": 4, "guidance_scale": 1.0} and lora["public"] is False

    listed = app_client.get("/v1/loras?limit=1", headers=bearer(client_key)).json()
    assert listed["object"] == "list" and [item["id"] for item in listed["data"]] == [lora["id"]]
    assert app_client.get(f"/v1/loras/{lora['id']}", headers=bearer(client_key)).status_code == 200

    other = new_key("other-client")[1]
    assert app_client.get(f"/v1/loras/{lora['id']}", headers=bearer(other)).status_code == 404
    assert lora["id"] not in [item["id"] for item in app_client.get("/v1/loras", headers=bearer(other)).json()["data"]]
    assert app_client.delete(f"/v1/loras/{lora['id']}", headers=bearer(other)).status_code == 404

    deleted = app_client.delete(f"/v1/loras/{lora['id']}", headers=bearer(client_key))
    assert deleted.json() == {"id": lora["id"], "object": "lora.deleted", "deleted": True}
    assert app_client.get(f"/v1/loras/{lora['id']}", headers=bearer(client_key)).status_code == 404


def test_admins_publish_adapters_to_every_client(app_client, client_key, new_key) -> None:
    assert upload(app_client, client_key, adapter_bytes(), public=True).status_code == 403
    admin = new_key("lora-admin", admin=True)[1]
    published = upload(app_client, admin, adapter_bytes(), name="distill", public=True).json()
    assert app_client.get(f"/v1/loras/{published['id']}", headers=bearer(client_key)).json()["public"] is True
    forbidden = app_client.delete(f"/v1/loras/{published['id']}", headers=bearer(client_key))
    assert forbidden.status_code == 403 and forbidden.json()["error"]["param"] == "lora_id"


@pytest.mark.parametrize(
    ("data", "form", "status", "param"),
    [
        (adapter_bytes(DiTShape(dim=64, ffn_dim=64, num_layers=2, text_dim=32, freq_dim=32)), {}, 422, "file"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!", {}, 422, "file"),
        (adapter_bytes(), {"model": "no-such-model"}, 422, "model"),
        (adapter_bytes(), {"flow_shift": 99}, 422, "flow_shift"),
        (b"\0" * (2**20 + 1), {}, 413, "file"),  # over VIDQ_LORA_MAX_UPLOAD_MB=1 (see the settings below)
    ],
)
def test_bad_uploads_are_refused_naming_the_field(app_client, client_key, admin_settings, data, form, status, param):
    admin_settings.lora_max_upload_mb = 1
    try:
        response = upload(app_client, client_key, data, **form)
    finally:
        admin_settings.lora_max_upload_mb = 2048
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param


def test_a_video_takes_adapters_and_their_recommended_settings(app_client, client_key, new_key) -> None:
    distill = upload(
        app_client, client_key, adapter_bytes(fmt="distill"), num_inference_steps=2, guidance_scale=1.0, flow_shift=5
    ).json()
    style = upload(app_client, client_key, adapter_bytes(fmt="diffusers"), guidance_scale=3.0).json()
    body = {"prompt": "a fox", "model": "tiny-wan", "loras": [{"id": distill["id"], "scale": 0.8}, {"id": style["id"]}]}
    job = app_client.post("/v1/videos", headers=bearer(client_key), json=body).json()
    assert job["loras"] == [
        {"id": distill["id"], "name": "style", "scale": 0.8},
        {"id": style["id"], "name": "style", "scale": 1.0},
    ]
    # the first adapter that recommends a setting wins; what the request says wins over both
    assert (job["num_inference_steps"], job["guidance_scale"], job["flow_shift"]) == (2, 1.0, 5.0)
    explicit = app_client.post("/v1/videos", headers=bearer(client_key), json={**body, "num_inference_steps": 6})
    assert explicit.json()["num_inference_steps"] == 6

    # multipart (OpenAI's SDK): the list as one JSON-encoded field
    form = {"prompt": "a fox", "model": "tiny-wan", "loras": json.dumps([{"id": style["id"], "scale": 0.5}])}
    parts = {name: (None, value) for name, value in form.items()}  # fields without a filename
    multipart = app_client.post("/v1/videos", headers=bearer(client_key), files=parts)
    assert multipart.status_code == 202, multipart.text
    assert multipart.json()["loras"][0]["scale"] == 0.5

    other = new_key("no-access")[1]
    refused = app_client.post("/v1/videos", headers=bearer(other), json=body)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "loras"
    use_counts = [
        app_client.get(f"/v1/loras/{lora['id']}", headers=bearer(client_key)).json()["use_count"]
        for lora in (distill, style)
    ]
    assert use_counts == [2, 3]  # the refused submission counts no use


def test_the_dashboard_lists_adapters_with_use_counts(app_client, new_key) -> None:
    admin = new_key("dash-admin", admin=True)[1]
    lora = upload(app_client, admin, adapter_bytes(), name="dashboard-style").json()
    job = app_client.post(
        "/v1/videos",
        headers=bearer(admin),
        json={"prompt": "a fox", "model": "tiny-wan", "loras": [{"id": lora["id"], "scale": 0.75}]},
    ).json()
    login(app_client, admin)
    page = app_client.get("/admin/loras")
    assert page.status_code == 200 and "dashboard-style" in page.text and lora["id"] in page.text
    row = page.text[page.text.index(f'data-lora="{lora["id"]}"') :]
    assert "<td>1</td>" in row[: row.index("</tr>")]  # its use count
    job_page = app_client.get(f"/admin/jobs/{job['id']}").text
    assert lora["id"] in job_page and "dashboard-style × 0.75" in job_page


def test_a_two_expert_model_takes_one_adapter_for_both_experts_or_a_pair(app_client, client_key) -> None:
    model = "tiny-wan2.2-t2v-a14b"
    high = upload(app_client, client_key, adapter_bytes(seed=1), name="high", model=model).json()
    low = upload(app_client, client_key, adapter_bytes(seed=2), name="low", model=model).json()
    other_model = upload(app_client, client_key, adapter_bytes(seed=3), name="wan21").json()

    def submit(loras: list[dict], model: str = model):  # type: ignore[no-untyped-def]
        body = {"prompt": "a fox", "model": model, "loras": loras}
        return app_client.post("/v1/videos", headers=bearer(client_key), json=body)

    # one adapter: both experts (recorded as before)
    both = submit([{"id": high["id"], "scale": 0.8}])
    assert both.status_code == 202, both.text
    assert both.json()["loras"] == [{"id": high["id"], "name": "high", "scale": 0.8}]
    # a published high-noise/low-noise pair: one entry, each file into its expert
    pair = submit([{"id": high["id"], "id_2": low["id"], "scale_2": 0.5}])
    assert pair.status_code == 202, pair.text
    assert pair.json()["loras"] == [
        {"id": high["id"], "name": "high", "scale": 1.0, "id_2": low["id"], "name_2": "low", "scale_2": 0.5}
    ]
    # one file, another strength in the low-noise expert (0: the high-noise expert only)
    high_only = submit([{"id": high["id"], "scale_2": 0}]).json()["loras"]
    assert high_only == [
        {"id": high["id"], "name": "high", "scale": 1.0, "id_2": high["id"], "name_2": "high", "scale_2": 0.0}
    ]

    refused = {
        "per-expert fields on a one-transformer model": submit([{"id": other_model["id"], "scale_2": 0.5}], "tiny-wan"),
        "a low-noise adapter of another model": submit([{"id": high["id"], "id_2": other_model["id"]}]),
        "an unknown low-noise adapter": submit([{"id": high["id"], "id_2": "lora_nope"}]),
        "the same adapter twice in one expert": submit([{"id": high["id"], "id_2": low["id"]}, {"id": low["id"]}]),
        "scale_2 out of range": submit([{"id": high["id"], "scale_2": 9}]),
    }
    for why, response in refused.items():
        assert response.status_code == 422, (why, response.text)
        assert response.json()["error"]["param"].startswith("loras"), (why, response.json())
