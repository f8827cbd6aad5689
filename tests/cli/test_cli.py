"""The `vidq` command as a newcomer runs it: embedded mode, no infrastructure configured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
from sqlalchemy import create_engine, select

from jobs.keys import hash_key
from jobs.models import ApiKey

VIDQ = str(Path(sys.executable).with_name("vidq"))


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDQ_")}
    env["VIDQ_DATA_DIR"] = str(data_dir)
    return env


def test_demo_renders_a_video_and_prints_its_path_last(tmp_path: Path) -> None:
    result = subprocess.run(
        [VIDQ, "demo"], env=embedded_env(tmp_path), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.suffix == ".mp4" and path.is_relative_to(tmp_path)
    frames = iio.imread(path)
    assert frames.shape == (9, 64, 64, 3)  # tiny-wan's defaults
    assert "100%" in result.stderr and "denoising" in result.stderr  # the live progress bar was drawn


def test_keys_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(tmp_path: Path) -> None:
    result = subprocess.run(
        [VIDQ, "keys", "create", "--name", "ci", "--admin"],
        env=embedded_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("vq_") and " " not in key
    engine = create_engine(f"sqlite:///{tmp_path / 'vidq.db'}")
    with engine.connect() as conn:
        row = conn.execute(select(ApiKey.key_hash, ApiKey.is_admin, ApiKey.name)).one()
    assert tuple(row) == (hash_key(key), True, "ci")
    assert key not in (tmp_path / "vidq.db").read_bytes().decode("latin-1")
