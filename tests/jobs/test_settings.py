"""The one settings tree: what it refuses, how it parses, and that service and engine agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from jobs.settings import DEFAULT_SECRET, DEFAULT_WEBHOOK_RETRY_SCHEDULE_S, Settings
from spec.settings import EngineSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch) -> None:
    for name in ("VIDQ_ENVIRONMENT", "VIDQ_SECRET_KEY", "VIDQ_DATA_DIR", "VIDQ_MODELS_DIR", "VIDQ_VRAM_BUDGET_GB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VIDQ_WORKER_VRAM_GB", raising=False)
    monkeypatch.delenv("VIDQ_WEBHOOK_RETRY_SCHEDULE_S", raising=False)


def test_production_refuses_the_default_secret(monkeypatch) -> None:
    monkeypatch.setenv("VIDQ_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="VIDQ_SECRET_KEY"):
        Settings()
    monkeypatch.setenv("VIDQ_SECRET_KEY", "a-real-secret")
    assert Settings().secret_key.get_secret_value() == "a-real-secret"


def test_development_accepts_the_default_secret() -> None:
    assert Settings().secret_key.get_secret_value() == DEFAULT_SECRET


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("[1, 2.5, 60]", [1.0, 2.5, 60.0]), ("5,300, 1800", [5.0, 300.0, 1800.0]), ("[]", [])],
)
def test_retry_schedule_parses_json_or_commas(monkeypatch, raw: str, parsed: list[float]) -> None:
    monkeypatch.setenv("VIDQ_WEBHOOK_RETRY_SCHEDULE_S", raw)
    assert Settings().webhook_retry_schedule_s == parsed


def test_retry_schedule_default_and_negative_delays() -> None:
    assert Settings().webhook_retry_schedule_s == DEFAULT_WEBHOOK_RETRY_SCHEDULE_S
    with pytest.raises(ValidationError, match=">= 0"):
        Settings(webhook_retry_schedule_s="5,-1")


def test_service_and_engine_look_for_models_in_the_same_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VIDQ_DATA_DIR", str(tmp_path))
    assert Settings().resolved_models_dir == EngineSettings().resolved_models_dir == tmp_path / "models"
    monkeypatch.setenv("VIDQ_MODELS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().resolved_models_dir == EngineSettings().resolved_models_dir == tmp_path / "elsewhere"


def test_one_gpu_memory_budget_under_either_name(monkeypatch) -> None:
    assert Settings().vram_budget_gb is None
    monkeypatch.setenv("VIDQ_WORKER_VRAM_GB", "24")
    assert Settings().vram_budget_gb == 24.0
    monkeypatch.setenv("VIDQ_VRAM_BUDGET_GB", "40")
    assert Settings().vram_budget_gb == EngineSettings().vram_budget_gb == 40.0
    assert Settings(vram_budget_gb=8).vram_budget_gb == 8.0


def test_service_settings_are_engine_settings() -> None:
    # What lets a worker pass its settings to `Engine(model, settings)` unchanged.
    assert isinstance(Settings(), EngineSettings)
