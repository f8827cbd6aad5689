"""Where models come from: settings, registry names, folders, hub ids (the Hub itself unreachable)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.models import locate
from spec.registry import UnknownModelError
from spec.settings import EngineSettings


def test_settings_read_vidq_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("VIDQ_ATTENTION_BACKEND", "cudnn")
    settings = EngineSettings()
    assert settings.resolved_models_dir == tmp_path
    assert settings.attention_backend == "cudnn"


def test_settings_default_models_dir_is_expanded(monkeypatch) -> None:
    monkeypatch.delenv("VIDQ_MODELS_DIR", raising=False)
    monkeypatch.delenv("VIDQ_DATA_DIR", raising=False)
    assert EngineSettings().resolved_models_dir == Path.home() / ".vidq" / "models"


def test_models_dir_follows_the_data_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIDQ_MODELS_DIR", raising=False)
    monkeypatch.setenv("VIDQ_DATA_DIR", str(tmp_path))
    assert EngineSettings().resolved_models_dir == tmp_path / "models"


def test_engine_defaults_ignore_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_OFFLOAD", "layerwise")
    assert EngineSettings().offload == "layerwise"
    assert EngineSettings.defaults().offload == "auto"


def test_settings_reject_unknown_backend(monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_ATTENTION_BACKEND", "warp-speed")
    with pytest.raises(ValueError):
        EngineSettings()


def test_folder_is_used_as_is(tiny_folder: Path) -> None:
    located = locate.locate_model(tiny_folder, Path("/nonexistent"))
    assert located.folder == tiny_folder.resolve() and located.spec is None


def hf_cache_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """Lay `source` out the way the Hugging Face cache stores a downloaded repo (refs/main -> snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


@pytest.fixture
def hf_cache(monkeypatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache, and a Hub that cannot be reached."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    def offline(repo_id: str) -> Path:
        raise OSError("network unreachable")

    monkeypatch.setattr(locate, "_download", offline)
    return cache


def test_a_plain_diffusers_folder_in_models_dir_is_installed(tiny_folder: Path, tmp_path: Path, hf_cache) -> None:
    shutil.copytree(tiny_folder, tmp_path / "models" / "wan2.1-t2v-1.3b")  # copied by hand: no marker file
    located = locate.locate_model("wan2.1-t2v-1.3b", tmp_path / "models")
    assert located.folder == tmp_path / "models" / "wan2.1-t2v-1.3b"
    assert located.spec.name == "wan2.1-t2v-1.3b"


def test_hub_id_resolves_through_the_hugging_face_cache(tiny_folder: Path, tmp_path: Path, hf_cache: Path) -> None:
    snapshot = hf_cache_snapshot(hf_cache, "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tiny_folder)
    for name in ("wan2.1-t2v-1.3b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        located = locate.locate_model(name, tmp_path / "models")
        assert located.folder == snapshot and located.model_id == "wan2.1-t2v-1.3b"


def test_missing_weights_make_a_folder_incomplete(tiny_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)
    assert locate.folder_is_complete(folder)
    weights = next((folder / "transformer").glob("*.safetensors"))
    weights.unlink()  # an interrupted copy: the config is there, the weights are not
    assert not locate.folder_is_complete(folder)
    assert not locate.folder_is_complete(tmp_path / "nothing-here")


def test_a_sharded_component_needs_every_shard(tiny_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)
    transformer = folder / "transformer"
    weights = next(transformer.glob("*.safetensors"))
    weights.rename(transformer / "diffusion_pytorch_model-00001-of-00002.safetensors")
    index = {
        "weight_map": {
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
        }
    }
    (transformer / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert not locate.folder_is_complete(folder)
    (transformer / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"")
    assert locate.folder_is_complete(folder)


def test_not_installed_and_offline_names_the_install_command(tmp_path: Path, hf_cache) -> None:
    (tmp_path / "models" / "wan2.1-t2v-14b").mkdir(parents=True)
    (tmp_path / "models" / "wan2.1-t2v-14b" / "model_index.json").write_text('{"transformer": ["diffusers", "X"]}')
    with pytest.raises(locate.ModelNotInstalledError) as caught:
        locate.locate_model("wan2.1-t2v-14b", tmp_path / "models")  # a folder without its weights is not enough
    message = str(caught.value)
    assert "hf download Wan-AI/Wan2.1-T2V-14B-Diffusers" in message and "\n" not in message
    assert caught.value.code == "model_unavailable"  # what a failed job records
    assert locate.installed_folder(caught.value.spec, tmp_path / "models") is None


def test_a_missing_model_is_downloaded_into_the_hugging_face_cache(
    tiny_folder: Path, tmp_path: Path, hf_cache: Path, monkeypatch
) -> None:
    calls = []

    def fake_hub(repo_id: str) -> Path:
        calls.append(repo_id)
        return hf_cache_snapshot(hf_cache, repo_id, tiny_folder)

    monkeypatch.setattr(locate, "_download", fake_hub)
    located = locate.locate_model("wan2.1-t2v-1.3b", tmp_path / "models")
    assert calls == ["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"]
    assert located.folder.is_relative_to(hf_cache)
    assert locate.locate_model("wan2.1-t2v-1.3b", tmp_path / "models").folder == located.folder
    assert len(calls) == 1  # the second lookup finds it in the cache


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError):
        locate.locate_model("not-a-model", tmp_path)
