"""Which installed models a worker serves by default, by its GPU count."""

from pathlib import Path

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
    assert "tiny-ltx-video" in one and "tiny-ltx-video" not in two
    assert "tiny-wan" in two
    assert set(two) == {name for name in one if get_spec(name).max_gpus >= 2}


def test_a_model_named_explicitly_is_served_whatever_the_gpu_count(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_gpus=2, worker_models="tiny-ltx-video")
    assert served_models(settings) == ["tiny-ltx-video"]
