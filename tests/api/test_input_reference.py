"""An image-to-video job's input image through the API: checked, fitted, stored with the job, shown
on the dashboard, deleted with the job. PostgreSQL and a local storage folder, no worker."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from jobs.settings import Settings
from jobs.storage import make_storage
from tests.api.conftest import bearer, login

I2V = {"prompt": "the lighthouse, waves rolling in", "model": "tiny-wan-i2v", "size": "96x64", "num_inference_steps": 2}


def png(width: int, height: int) -> bytes:
    pixels = (np.indices((height, width)).sum(0) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_input_image_is_stored_fitted_shown_and_deleted_with_the_job(
    app_client: TestClient, admin_settings: Settings, new_key
) -> None:
    _, key = new_key()
    form = {k: str(v) for k, v in I2V.items()}
    created = app_client.post(
        "/v1/videos",
        data=form,
        files={"input_reference": ("frame.png", png(300, 150), "image/png")},
        headers=bearer(key),
    )
    assert created.status_code == 202, created.text
    video_id = created.json()["id"]
    storage = make_storage(admin_settings)
    stored = storage.get_bytes(f"inputs/{video_id}/input_reference.png")
    assert stored is not None and Image.open(io.BytesIO(stored)).size == (96, 64)  # fitted to the job's size

    _, admin_key = new_key(admin=True)
    login(app_client, admin_key)
    page = app_client.get(f"/admin/jobs/{video_id}")
    assert f'src="/admin/jobs/{video_id}/input_reference"' in page.text
    served = app_client.get(f"/admin/jobs/{video_id}/input_reference")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png" and served.content == stored

    assert app_client.delete(f"/v1/videos/{video_id}", headers=bearer(key)).status_code == 200
    assert storage.get_bytes(f"inputs/{video_id}/input_reference.png") is None


def test_json_data_url_works_like_a_file_part(app_client: TestClient, admin_settings: Settings, new_key) -> None:
    _, key = new_key()
    data_url = "data:image/png;base64," + base64.b64encode(png(64, 64)).decode()
    created = app_client.post("/v1/videos", json={**I2V, "input_reference": data_url}, headers=bearer(key))
    assert created.status_code == 202, created.text
    assert make_storage(admin_settings).get_bytes(f"inputs/{created.json()['id']}/input_reference.png")


def test_bad_images_are_422s_naming_input_reference_and_store_nothing(
    app_client: TestClient, admin_settings: Settings, new_key
) -> None:
    _, key = new_key()
    form = {k: str(v) for k, v in I2V.items()}
    for name, data, content_type in [
        ("frame.png", b"\x89PNG\r\n\x1a\n not really", "image/png"),  # undecodable
        ("frame.gif", b"GIF89a" + b"\0" * 32, "image/gif"),  # a format we do not take
        ("frame.png", png(8, 8), "image/png"),  # too small to mean anything
    ]:
        refused = app_client.post(
            "/v1/videos", data=form, files={"input_reference": (name, data, content_type)}, headers=bearer(key)
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["param"] == "input_reference"
    listed = app_client.get("/v1/videos", headers=bearer(key)).json()
    assert listed["data"] == []
