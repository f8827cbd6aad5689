"""Where models come from: settings, registry names, folders, hub ids (the hub itself faked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.models import locate
from engine.registry import UnknownModelError
from engine.settings import EngineSettings


def test_settings_read_vidq_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("VIDQ_ATTENTION_BACKEND", "cudnn")
    settings = EngineSettings()
    assert settings.models_dir == tmp_path
    assert settings.attention_backend == "cudnn"


def test_settings_default_models_dir_is_expanded(monkeypatch) -> None:
    monkeypatch.delenv("VIDQ_MODELS_DIR", raising=False)
    assert EngineSettings().models_dir == Path.home() / ".vidq" / "models"


def test_settings_reject_unknown_backend(monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_ATTENTION_BACKEND", "warp-speed")
    with pytest.raises(ValueError):
        EngineSettings()


def test_folder_is_used_as_is(tiny_folder: Path) -> None:
    located = locate.locate_model(tiny_folder, Path("/nonexistent"))
    assert located.folder == tiny_folder.resolve() and located.spec is None


def test_registry_name_downloads_hub_model_into_models_dir(monkeypatch, tmp_path: Path) -> None:
    calls = []

    def fake_download(repo_id: str, local_dir: Path | None) -> Path:
        calls.append((repo_id, local_dir))
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "model_index.json").write_text("{}")
        return local_dir

    monkeypatch.setattr(locate, "_download", fake_download)
    located = locate.locate_model("wan2.1-t2v-1.3b", tmp_path)
    assert calls == [("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tmp_path / "wan2.1-t2v-1.3b")]
    assert located.spec.name == "wan2.1-t2v-1.3b" and located.model_id == "wan2.1-t2v-1.3b"
    # complete: a second lookup does not download again, also when asked by hub id
    assert locate.locate_model("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tmp_path).folder == located.folder
    assert len(calls) == 1


def test_interrupted_download_is_resumed_and_offline_copy_is_used(monkeypatch, tmp_path: Path) -> None:
    folder = tmp_path / "wan2.1-t2v-14b"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")  # present, but no completion marker

    def offline(repo_id: str, local_dir: Path | None) -> Path:
        raise OSError("network unreachable")

    monkeypatch.setattr(locate, "_download", offline)
    assert locate.locate_model("wan2.1-t2v-14b", tmp_path).folder == folder
    with pytest.raises(OSError):
        locate.locate_model("wan2.1-t2v-1.3b", tmp_path)  # nothing on disk to fall back to


def test_unknown_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError):
        locate.locate_model("not-a-model", tmp_path)
