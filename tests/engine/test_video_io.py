"""mp4 and thumbnail writing, read back with independent decoders."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from engine.io.video import encode_mp4, write_thumbnail


def gradient_frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients (compress well, so decoded pixels stay close to the originals)."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [np.stack([(x * 4 + i * 8) % 256, (y * 4) % 256, np.full_like(x, 128)], -1) for i in range(count)]
    return np.asarray(frames, dtype=np.uint8)


@pytest.mark.parametrize(("count", "height", "width"), [(9, 64, 64), (5, 64, 96), (13, 96, 64), (17, 480, 832)])
def test_mp4_reads_back_with_frame_count_and_size(tmp_path: Path, count: int, height: int, width: int) -> None:
    frames = gradient_frames(count, height, width)
    path = encode_mp4(frames, tmp_path / "clip.mp4", fps=8)
    reader = imageio.get_reader(path)
    try:
        decoded = np.asarray(list(reader.iter_data()))
        meta = reader.get_meta_data()
    finally:
        reader.close()
    assert decoded.shape == (count, height, width, 3)
    assert meta["fps"] == 8
    assert meta["codec"] == "h264"
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 8
    assert not list(tmp_path.glob(".*partial*"))


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    path = encode_mp4(gradient_frames(5, 45, 63), tmp_path / "odd.mp4", fps=4)
    reader = imageio.get_reader(path)
    try:
        assert np.asarray(reader.get_data(0)).shape == (46, 64, 3)
    finally:
        reader.close()


def test_rejects_non_uint8_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((3, 16, 16, 3), np.float32), tmp_path / "x.mp4", fps=8)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_thumbnail_is_a_valid_image_of_the_middle_frame(tmp_path: Path, suffix: str) -> None:
    frames = gradient_frames(9, 64, 96)
    path = write_thumbnail(frames, tmp_path / f"thumb{suffix}")
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (96, 64)
        assert image.format == ("JPEG" if suffix == ".jpg" else "PNG")
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(pixels - frames[4]).mean() < np.abs(pixels - frames[0]).mean()
