"""Writing frames as a browser-playable mp4 and a thumbnail image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# H.264 with yuv420p subsamples chroma 2x2, so both sides must be even; libx264 needs no more
# than that. imageio's default macro_block_size=16 would rescale 64x64 fine but resize e.g.
# 840x480; we pad to even sizes ourselves instead and keep the pixels as generated.
MACRO_BLOCK = 2


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to write")


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Edge-pad H and W up to multiples of MACRO_BLOCK (a no-op for every registry size)."""
    _, height, width, _ = frames.shape
    pad_h, pad_w = -height % MACRO_BLOCK, -width % MACRO_BLOCK
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def encode_mp4(frames: np.ndarray, path: str | Path, fps: int, quality: int = 8) -> Path:
    """Encode uint8 frames [F, H, W, 3] as H.264 / yuv420p at `fps`; returns the path.

    Written to a temporary name in the same folder and renamed, so a reader never sees a
    partial file. `quality` is imageio's 0-10 scale (8 is visually lossless for most content).
    """
    import imageio.v2 as imageio

    _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.mp4")
    writer = imageio.get_writer(
        partial,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        quality=quality,
        macro_block_size=MACRO_BLOCK,
        ffmpeg_log_level="error",
        # Moves the index to the front so browsers can start playing before the download ends.
        output_params=["-movflags", "+faststart"],
    )
    try:
        for frame in _pad_even(frames):
            writer.append_data(frame)
    finally:
        writer.close()
    os.replace(partial, path)
    return path


def write_thumbnail(frames: np.ndarray, path: str | Path) -> Path:
    """Save the middle frame as an image (format from the suffix: .jpg or .png); returns the path."""
    from PIL import Image

    _check_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(frames[len(frames) // 2])
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=90)
    else:
        image.save(path)
    return path
