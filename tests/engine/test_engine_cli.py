"""`python -m engine generate` end to end in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
from PIL import Image


def test_cli_generate_writes_mp4_and_thumbnail(tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "clip.mp4"
    env = {**os.environ, "VIDQ_MODELS_DIR": str(tiny_folder.parent)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "generate",
            "--model",
            "tiny-wan",
            "--prompt",
            "a bird flies",
            "--size",
            "96x64",
            "--num-frames",
            "13",
            "--steps",
            "3",
            "--seed",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    assert str(tiny_folder) in result.stderr  # VIDQ_MODELS_DIR was honoured
    assert "denoising 3/3 (100%)" in result.stderr and "step/s" in result.stderr  # plain lines: not a TTY
    assert "\r" not in result.stderr
    assert "denoising" in result.stderr and "peak memory" in result.stderr
    reader = imageio.get_reader(out)
    try:
        assert reader.count_frames() == 13
        assert reader.get_meta_data()["size"] == (96, 64)
    finally:
        reader.close()
    with Image.open(out.with_suffix(".jpg")) as image:
        assert image.size == (96, 64)


def test_cli_rejects_a_size_the_model_does_not_offer(tiny_folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "VIDQ_MODELS_DIR": str(tiny_folder.parent)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "generate",
            "--model",
            "tiny-wan",
            "--prompt",
            "x",
            "--size",
            "832x480",
            "--out",
            str(tmp_path / "x.mp4"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 2
    assert "size" in result.stderr
    assert not (tmp_path / "x.mp4").exists()


def _generate(tiny_folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VIDQ_MODELS_DIR": str(tiny_folder.parent)}
    command = [sys.executable, "-m", "engine", "generate", "--prompt", "waves", "--steps", "2", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)


def test_cli_image_to_video_needs_and_uses_image(tiny_folder: Path, tmp_path: Path) -> None:
    missing = _generate(tiny_folder, "--model", "tiny-wan-i2v", "--out", str(tmp_path / "none.mp4"))
    assert missing.returncode == 2 and "image" in missing.stderr  # refused before loading anything
    extra_image = tmp_path / "first.png"
    Image.new("RGB", (120, 90), (200, 40, 40)).save(extra_image)
    refused = _generate(
        tiny_folder, "--model", "tiny-wan", "--image", str(extra_image), "--out", str(tmp_path / "t.mp4")
    )
    assert refused.returncode == 2 and "image" in refused.stderr  # a text-to-video model takes none
    unreadable = tmp_path / "broken.png"
    unreadable.write_bytes(b"not a png")
    broken = _generate(
        tiny_folder, "--model", "tiny-wan-i2v", "--image", str(unreadable), "--out", str(tmp_path / "b.mp4")
    )
    assert broken.returncode == 2 and "--image" in broken.stderr

    out = tmp_path / "i2v.mp4"
    result = _generate(tiny_folder, "--model", "tiny-wan-i2v", "--image", str(extra_image), "--size", "96x64",
                       "--num-frames", "5", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    reader = imageio.get_reader(out)
    try:
        assert reader.count_frames() == 5 and reader.get_meta_data()["size"] == (96, 64)
    finally:
        reader.close()
