"""A job's input image (`input_reference`): checked, fitted to the job's size, stored with the job.

What a client sends is checked before the job exists, so a bad image is a 422 naming
`input_reference`, never a failed render: the declared and the actual format must be PNG, JPEG or
WebP, the file at most `MAX_INPUT_IMAGE_BYTES`, the image decodable (fully: a truncated file is
refused), at most `MAX_INPUT_IMAGE_PIXELS` (a decompression-bomb guard) and at least
`MIN_INPUT_IMAGE_SIDE` pixels a side.

The image is then fitted to the job's width x height the way diffusers' image processor does with
`resize_mode="crop"`: scaled (Lanczos) until it covers the frame with its aspect ratio kept, then
centre-cropped to exactly width x height. (diffusers' Wan image-to-video pipelines themselves
stretch the image to the size, distorting it when the aspect ratios differ; fitting first makes
that stretch the identity.) The fitted image is stored as PNG (lossless) under
`input_reference_key(job_id)`, read by the worker, shown on the dashboard's job page and deleted
with the job.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from jobs.errors import InvalidParameter
from jobs.storage import Storage
from spec.images import fit_to_size

if TYPE_CHECKING:
    from PIL import Image

    from jobs.validation import InputReference

MAX_INPUT_IMAGE_BYTES = 10 * 2**20
MAX_INPUT_IMAGE_PIXELS = 40_000_000
MIN_INPUT_IMAGE_SIDE = 16
# PIL format name -> the content types a client may declare for it.
FORMATS: dict[str, tuple[str, ...]] = {
    "PNG": ("image/png",),
    "JPEG": ("image/jpeg", "image/jpg"),
    "WEBP": ("image/webp",),
}
PARAM = "input_reference"


def _refuse(message: str) -> InvalidParameter:
    return InvalidParameter(message, param=PARAM)


def decode_input_reference(reference: InputReference) -> Image.Image:
    """The client's image as an RGB PIL image; raises InvalidParameter (param input_reference)."""
    from PIL import Image, UnidentifiedImageError

    if len(reference.data) > MAX_INPUT_IMAGE_BYTES:
        raise _refuse(f"input_reference is larger than {MAX_INPUT_IMAGE_BYTES // 2**20} MiB")
    if not reference.data:
        raise _refuse("input_reference is empty")
    declared = reference.content_type.split(";")[0].strip().lower()
    allowed = sorted({t for types in FORMATS.values() for t in types})
    if declared not in allowed and declared not in ("", "application/octet-stream"):
        raise _refuse(f"input_reference must be PNG, JPEG or WebP, not {declared!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(reference.data))
            if image.format not in FORMATS:
                raise _refuse(f"input_reference must be PNG, JPEG or WebP, not {image.format}")
            if declared in allowed and declared not in FORMATS[image.format]:
                raise _refuse(f"input_reference is declared {declared} but is a {image.format} image")
            width, height = image.size
            if width * height > MAX_INPUT_IMAGE_PIXELS:
                raise _refuse(f"input_reference has {width}x{height} pixels, more than {MAX_INPUT_IMAGE_PIXELS:,}")
            image.load()  # decodes every byte: a truncated or corrupt file fails here
    except InvalidParameter:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise _refuse(f"input_reference is not a decodable image ({exc})") from None
    if min(width, height) < MIN_INPUT_IMAGE_SIDE:
        raise _refuse(f"input_reference is {width}x{height}; each side must be at least {MIN_INPUT_IMAGE_SIDE} px")
    return image.convert("RGB")


def prepare_input_reference(reference: InputReference, width: int, height: int) -> bytes:
    """Check, decode and fit the client's image to width x height -> PNG bytes to store."""
    fitted = fit_to_size(decode_input_reference(reference), width, height)
    buffer = io.BytesIO()
    fitted.save(buffer, format="PNG")
    return buffer.getvalue()


def input_reference_key(job_id: str) -> str:
    """Object key of a job's fitted input image."""
    return f"inputs/{job_id}/input_reference.png"


def store_input_reference(storage: Storage, job_id: str, png: bytes) -> str:
    """Write the fitted image for `job_id`; returns its key (kept on the job)."""
    key = input_reference_key(job_id)
    storage.put_bytes(key, png, "image/png")
    return key


def load_input_reference(storage: Storage, key: str) -> Image.Image:
    """The stored input image as RGB (what the worker hands the engine); raises if it is gone."""
    from PIL import Image

    data = storage.get_bytes(key)
    if data is None:
        raise FileNotFoundError(f"the job's input image {key} is missing from object storage")
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
