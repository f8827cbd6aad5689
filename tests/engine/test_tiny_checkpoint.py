"""The built-in tiny checkpoint: layout, determinism, safe concurrent creation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from engine.models import tiny
from engine.models.components import CheckpointError, check_folder
from engine.models.safetensors_io import load_state_dict


def test_engine_by_name_writes_tiny_into_models_dir(tiny_engine, models_dir: Path) -> None:
    assert tiny_engine.folder == models_dir / "tiny-wan"
    assert tiny_engine.spec is not None and tiny_engine.spec.name == "tiny-wan"
    index = json.loads((tiny_engine.folder / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    check_folder(tiny_engine.folder)


def test_engine_by_path_loads_same_weights(tiny_engine, tiny_folder: Path, make_request) -> None:
    from engine.engine import Engine

    by_path = Engine(tiny_folder, device="cpu")
    assert by_path.spec is None
    request = make_request()
    torch.testing.assert_close(by_path.generate(request).latents, tiny_engine.generate(request).latents)


def test_tokenizer_is_a_real_trained_tokenizer(tiny_folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_folder / "tokenizer")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    ids = tokenizer("a cat walks on the beach").input_ids
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids
    assert len(ids) < len("a cat walks on the beach")  # subwords, not characters
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a cat walks on the beach"


def test_tiny_writer_is_deterministic(tiny_folder: Path, tmp_path: Path) -> None:
    again = tiny.write_tiny_wan(tmp_path / "tiny-wan")
    for part in ("transformer", "vae"):
        first, second = load_state_dict(tiny_folder / part), load_state_dict(again / part)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first)
    text_first = load_state_dict(tiny_folder / "text_encoder", weights_name="model.safetensors")
    text_second = load_state_dict(again / "text_encoder", weights_name="model.safetensors")
    assert all(torch.equal(text_first[k], text_second[k]) for k in text_first)


def test_losing_a_creation_race_keeps_the_winner(tiny_folder: Path, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "tiny-wan"
    real_write = tiny._write_components

    def write_while_another_process_finishes_first(staging: Path, variant: tiny.TinyVariant) -> None:
        real_write(staging, variant)
        shutil.copytree(tiny_folder, target)  # the other writer's rename lands first

    monkeypatch.setattr(tiny, "_write_components", write_while_another_process_finishes_first)
    assert tiny.write_tiny_wan(target) == target
    check_folder(target)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-wan"]  # our staging copy was removed


def test_existing_checkpoint_is_not_rewritten(tiny_folder: Path, monkeypatch) -> None:
    monkeypatch.setattr(tiny, "_write_components", lambda staging, variant: pytest.fail("rewrote"))
    assert tiny.write_tiny_wan(tiny_folder) == tiny_folder


def test_incomplete_folder_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        check_folder(tmp_path)
