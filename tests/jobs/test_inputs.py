"""An input image's checks and fitting (jobs.inputs, spec.images): no services needed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.errors import InvalidParameter
from jobs.inputs import MAX_INPUT_IMAGE_BYTES, decode_input_reference, prepare_input_reference
from jobs.validation import InputReference
from spec.images import fit_to_size


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: where a crop cuts is visible."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2 :, 2] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize(
    ("fmt", "content_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
)
def test_png_jpeg_and_webp_are_fitted_to_the_job_size(fmt: str, content_type: str) -> None:
    png = prepare_input_reference(InputReference(encoded(halves(300, 200), fmt), content_type), 96, 64)
    fitted = Image.open(io.BytesIO(png))
    assert (fitted.format, fitted.size, fitted.mode) == ("PNG", (96, 64), "RGB")


def test_fitting_keeps_the_aspect_ratio_and_crops_the_centre() -> None:
    # 200x100 into 64x64: scaled to 128x64, the middle 64 columns kept (half red, half blue)
    fitted = np.asarray(fit_to_size(halves(200, 100), 64, 64)).astype(int)
    assert fitted[:, :28, 0].min() > 200 and fitted[:, :28, 2].max() < 60
    assert fitted[:, 36:, 2].min() > 200 and fitted[:, 36:, 0].max() < 60
    # a tall image into a wide frame: the width is matched, top and bottom cropped
    tall = fit_to_size(halves(100, 400), 96, 64)
    assert tall.size == (96, 64)
    assert np.asarray(tall)[:, :40, 0].min() > 200  # the left half stays left: no rotation, no stretch


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        (b"GIF89a" + b"\0" * 64, "image/gif", "PNG, JPEG or WebP"),
        (b"not an image at all", "image/png", "not a decodable image"),
        (encoded(halves(64, 64), "PNG")[:100], "image/png", "not a decodable image"),  # truncated
        (encoded(halves(64, 64), "PNG"), "image/jpeg", "declared image/jpeg but is a PNG"),
        (encoded(halves(8, 8), "PNG"), "image/png", "at least 16 px"),
        (encoded(halves(64, 64), "BMP"), "image/bmp", "PNG, JPEG or WebP"),
        (b"", "image/png", "empty"),
    ],
)
def test_bad_images_are_refused_naming_input_reference(data: bytes, content_type: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as refused:
        decode_input_reference(InputReference(data, content_type))
    assert refused.value.param == "input_reference" and message in str(refused.value)


def test_an_image_over_the_size_limit_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidParameter, match="larger than 10 MiB") as refused:
        decode_input_reference(InputReference(b"\x89PNG" + b"\0" * MAX_INPUT_IMAGE_BYTES, "image/png"))
    assert refused.value.param == "input_reference"
