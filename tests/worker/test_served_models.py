"""Which installed models a worker serves by default, by its GPU count."""

from pathlib import Path

import pytest

from jobs.settings import Settings
from spec.registry import get_spec
from worker.engines import served_models


def test_a_rank_group_leaves_one_gpu_models_to_one_gpu_workers(tmp_path: Path) -> None:
    from engine.models.tiny_diffusers import write_tiny_diffusers

    models_dir = tmp_path / "models"
    write_tiny_diffusers("tiny-ltx-video", models_dir / "tiny-ltx-video")  # diffusers-backed: one GPU
    one = served_models(Settings(data_dir=tmp_path, models_dir=models_dir, worker_gpus=1))
    two = served_models(Settings(data_dir=tmp_path, models_dir=models_dir, worker_gpus=2))
    assert get_spec("tiny-ltx-video").max_gpus == 1
    assert "tiny-ltx-video" in one and len(one) > 2
    assert two == ["tiny-wan"]  # one rank group per process: the default model, which spans GPUs
    ltx_default = Settings(data_dir=tmp_path, models_dir=models_dir, worker_gpus=2, default_model="tiny-ltx-video")
    chosen = served_models(ltx_default)
    assert len(chosen) == 1 and get_spec(chosen[0]).max_gpus >= 2  # never a one-GPU model


def test_a_model_named_explicitly_is_served_whatever_the_gpu_count(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_gpus=2, worker_models="tiny-ltx-video")
    assert served_models(settings) == ["tiny-ltx-video"]


def test_a_rank_group_refuses_to_serve_several_models(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_gpus=2, worker_models="tiny-wan,tiny-wan-i2v")
    with pytest.raises(ValueError, match="serves one model"):
        served_models(settings)
