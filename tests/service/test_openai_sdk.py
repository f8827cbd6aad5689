"""OpenAI's own Python SDK, unchanged, pointed at vidq (only `base_url` and the key differ), against the
real stack: uvicorn, PostgreSQL, Redis, moto S3 and a `vidq worker` process. Each call here is one a
user switching from OpenAI's Videos API makes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import imageio.v3 as iio
import openai
import pytest
from openai import OpenAI

from tests.receiver import Receiver

# The SDK marks its video methods deprecated (OpenAI's own service); vidq serves them.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

QUICK = {"model": "tiny-wan", "size": "96x64", "seconds": "1.125"}  # 9 frames at 8 fps
STEPS = {"num_inference_steps": 2}  # vidq's own fields go through the SDK's extra_body
PNG_1PX = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


@pytest.fixture(scope="module", autouse=True)
def worker(start_worker, no_backlog):  # type: ignore[no-untyped-def]
    return start_worker()


@pytest.fixture
def sdk(live_api: str, make_key) -> Iterator[OpenAI]:  # type: ignore[no-untyped-def]
    with OpenAI(base_url=f"{live_api}/v1", api_key=make_key("sdk"), max_retries=0, timeout=60) as client:
        yield client


def test_create_sends_multipart_by_default_and_is_accepted(sdk: OpenAI) -> None:
    raw = sdk.videos.with_raw_response.create(prompt="a red fox in the snow", **QUICK, extra_body=STEPS)
    assert raw.http_request.headers["content-type"].startswith("multipart/form-data")
    assert raw.status_code == 202
    video = raw.parse()
    assert video.status in ("queued", "in_progress") and video.model == "tiny-wan"
    assert video.seconds == "1.125" and video.size == "96x64"
    assert int(raw.headers["openai-poll-after-ms"]) > 0
    sdk.videos.delete(video.id)  # not rendered: the worker drops the message of a deleted job


def test_an_image_for_a_text_only_model_is_refused_clearly(sdk: OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        sdk.videos.create(prompt="animate this", input_reference=("ref.png", PNG_1PX, "image/png"), **QUICK)
    assert info.value.param == "input_reference" and info.value.type == "invalid_request_error"
    assert "text-to-video" in info.value.message


def test_create_and_poll_then_retrieve_download_and_delete(sdk: OpenAI, tmp_path) -> None:  # type: ignore[no-untyped-def]
    video = sdk.videos.create_and_poll(prompt="a lantern in fog", **QUICK, extra_body=STEPS)
    assert video.status == "completed" and video.progress == 100 and video.completed_at
    assert sdk.videos.retrieve(video.id).status == "completed"

    mp4 = tmp_path / "video.mp4"
    sdk.videos.download_content(video.id).write_to_file(mp4)
    assert iio.imread(mp4).shape == (9, 64, 96, 3)  # 1.125 s at 8 fps, 96x64
    thumbnail = sdk.videos.download_content(video.id, variant="thumbnail").content
    assert thumbnail[:3] == b"\xff\xd8\xff" and iio.imread(thumbnail).shape == (64, 96, 3)

    deleted = sdk.videos.delete(video.id)
    assert deleted.id == video.id and deleted.deleted is True
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video.id)


def test_list_pages_through_every_video_in_both_orders(sdk: OpenAI) -> None:
    created = [
        sdk.videos.create(
            prompt=f"clip {i}", model="tiny-wan", size="64x64", seconds="0.625", extra_body={"num_inference_steps": 1}
        ).id
        for i in range(5)
    ]
    oldest_first = [v.id for v in sdk.videos.list(limit=2, order="asc")]  # three pages, fetched as iterated
    newest_first = [v.id for v in sdk.videos.list(limit=2, order="desc")]
    assert oldest_first == created and newest_first == created[::-1]
    first_page = sdk.videos.list(limit=2)
    assert first_page.has_more is True and first_page.has_next_page()
    for video_id in created:
        sdk.videos.delete(video_id)


def test_errors_arrive_as_the_sdks_typed_exceptions(sdk: OpenAI, live_api: str) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as invalid:
        sdk.videos.create(prompt="a wide shot", model="tiny-wan", size="1792x1024")
    assert invalid.value.param == "size" and "64x64" in invalid.value.message
    with pytest.raises(openai.UnprocessableEntityError) as too_long:
        sdk.videos.create(prompt="a long shot", model="tiny-wan", seconds="12")
    assert too_long.value.param == "seconds"
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.videos.retrieve("video_does_not_exist")
    assert missing.value.type == "not_found_error"
    with pytest.raises(openai.NotFoundError) as unsupported:
        sdk.videos.remix("video_does_not_exist", prompt="again, in blue")
    assert unsupported.value.code == "unsupported_endpoint"
    with (
        OpenAI(base_url=f"{live_api}/v1", api_key="vq_not-a-key", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        stranger.videos.list()
    assert refused.value.type == "authentication_error"


def test_webhook_endpoints_list_terminates_and_unwrap_reads_a_real_delivery(sdk: OpenAI, receiver: Receiver) -> None:
    endpoint = sdk.webhooks.create(url=receiver.url, event_types=["video.completed"], name="sdk hook")
    assert endpoint.signing_secret.startswith("whsec_") and endpoint.event_types == ["video.completed"]
    others = [sdk.webhooks.create(url=f"{receiver.url}/{i}", event_types=["video.failed"], name=f"{i}") for i in "ab"]
    listed = [e.id for e in sdk.webhooks.list(limit=1)]  # one per page: the SDK follows has_more and stops
    assert listed == [others[1].id, others[0].id, endpoint.id]
    for other in others:
        assert sdk.webhooks.delete(other.id).deleted is True

    video = sdk.videos.create_and_poll(prompt="fireworks over a lake", **QUICK, extra_body=STEPS)
    assert video.status == "completed"
    (delivery,) = receiver.wait_for(1)
    event = sdk.webhooks.unwrap(delivery.body, delivery.headers, secret=endpoint.signing_secret)
    assert event.id == delivery.headers["webhook-id"] and event.type == "video.completed"
    assert event.data.id == video.id and abs(event.created_at - time.time()) < 300
