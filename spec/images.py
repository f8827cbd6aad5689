"""Input images: fitting a first frame to the video's size (torch-free: the service and the engine CLI use it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale (Lanczos) to cover width x height keeping the aspect ratio, then centre-crop to it:
    diffusers' `VaeImageProcessor.resize(..., resize_mode="crop")`.

    diffusers' Wan image-to-video pipelines stretch the image to the video's size (distorting it
    when the aspect ratios differ); a fitted image makes that stretch the identity.
    """
    from PIL import Image

    source_ratio = image.width / image.height
    if width / height > source_ratio:  # the frame is wider: match widths, crop top and bottom
        cover_w, cover_h = width, max(height, round(width / source_ratio))
    else:  # match heights, crop the sides
        cover_w, cover_h = max(width, round(height * source_ratio)), height
    resized = image.convert("RGB").resize((cover_w, cover_h), resample=Image.Resampling.LANCZOS)
    left, top = (cover_w - width) // 2, (cover_h - height) // 2
    return resized.crop((left, top, left + width, top + height))


def load_image(path: Path, width: int, height: int) -> Image.Image:
    """An image file as an RGB PIL image fitted to width x height (`fit_to_size`)."""
    from PIL import Image

    with Image.open(path) as image:
        return fit_to_size(image, width, height)
