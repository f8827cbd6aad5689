"""Shared fixtures: one tiny-wan checkpoint and one warm engine for the whole session."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from spec.registry import TINY_WAN


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_engine(models_dir: Path):
    """Engine("tiny-wan") on the CPU; the first use writes the checkpoint into `models_dir`."""
    from engine.engine import Engine

    return Engine("tiny-wan", device="cpu", models_dir=models_dir)


@pytest.fixture(scope="session")
def tiny_folder(tiny_engine) -> Path:
    return tiny_engine.folder


BASE_REQUEST = dict(
    prompt="a red car drives through the city at sunset",
    negative_prompt="blurry, low quality",
    width=TINY_WAN.default_width,
    height=TINY_WAN.default_height,
    num_frames=TINY_WAN.default_frames,
    num_inference_steps=TINY_WAN.default_steps,
    guidance_scale=5.0,
    seed=1234,
    fps=TINY_WAN.default_fps,
)


@pytest.fixture
def make_request():
    """Build a tiny GenerationRequest, overriding any field by keyword."""
    from spec.request import GenerationRequest

    def build(**overrides) -> GenerationRequest:
        return replace(GenerationRequest(**BASE_REQUEST), **overrides)

    return build
