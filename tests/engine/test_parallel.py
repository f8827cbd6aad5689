"""Sequence and CFG parallelism on the CPU: gloo, 2 and 4 processes, against the single-process run.

Each case spawns real processes (engine.parallel.launch) that build their own model from the same
weights; rank 0 saves its result and the test compares it with the plain run in float32.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from engine.models.tiny import TINY_TRANSFORMER
from engine.models.wan_transformer import WanTransformer3DModel
from engine.parallel import ParallelConfig
from engine.parallel.launch import launch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


# -- transformer level: any sequence length, padding included --------------------------------


def _model_and_inputs(frames: int, height: int, width: int, batch: int = 2):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = WanTransformer3DModel(TINY_TRANSFORMER).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 16, frames, height, width, generator=generator)
    text = torch.randn(batch, 7, TINY_TRANSFORMER.text_dim, generator=generator)
    return model, (latents, torch.full((batch,), 600.0), text)


def _forward_rank(rank: int, config: ParallelConfig, shape: tuple[int, int, int], out: Path) -> None:
    from engine.parallel.state import initialize_parallel_state

    initialize_parallel_state(config)
    model, inputs = _model_and_inputs(*shape)
    model.sequence_parallel = True
    with torch.inference_mode():
        result = model(*inputs)
    if rank == 0:
        torch.save(result, out)


@pytest.mark.parametrize(
    ("world", "ulysses", "ring", "shape"),
    [
        (2, 2, 1, (3, 6, 10)),  # ulysses, 45 tokens: padded to 46
        (2, 1, 2, (3, 6, 10)),  # ring, padded
        (4, 1, 4, (3, 6, 10)),  # ring over 4, 45 tokens: padded to 48, last block partly padding
        (4, 2, 2, (3, 6, 10)),  # USP: ulysses x ring on a 2-D mesh
        (4, 2, 2, (2, 4, 4)),  # USP, 8 tokens: two tokens a rank
    ],
)
def test_sequence_parallel_forward_matches_one_process(world, ulysses, ring, shape, tmp_path: Path) -> None:
    config = ParallelConfig(world_size=world, ulysses_degree=ulysses, ring_degree=ring)
    out = tmp_path / "out.pt"
    launch(_forward_rank, world, config, shape, out, backend="gloo", timeout_s=120)
    model, inputs = _model_and_inputs(*shape)
    with torch.inference_mode():
        expected = model(*inputs)
    assert relative_error(torch.load(out), expected) < 1e-5


# -- pipeline level: final latents of a whole generation --------------------------------------


def _generate_rank(rank: int, config: ParallelConfig, folder: Path, request_fields: dict, out: Path) -> None:
    from engine.engine import Engine
    from spec.request import GenerationRequest

    engine = Engine(folder, device="cpu", parallel=config)
    steps: list[int] = []
    result = engine.generate(GenerationRequest(**request_fields), on_step=lambda info: steps.append(info.step))
    assert steps == list(range(1, request_fields["num_inference_steps"] + 1))
    if rank == 0:
        torch.save(result.latents, out)


@pytest.mark.parametrize(
    ("world", "ulysses", "ring", "cfg"),
    [
        (2, 1, 1, 2),  # CFG parallel
        (2, 2, 1, 1),  # ulysses
        (4, 1, 2, 2),  # ring x CFG parallel
        (4, 2, 2, 1),  # USP
    ],
)
def test_parallel_generation_gives_the_single_process_latents(
    world, ulysses, ring, cfg, tiny_engine, tiny_folder, make_request, tmp_path: Path
) -> None:
    request = make_request(num_inference_steps=3)
    config = ParallelConfig(world_size=world, ulysses_degree=ulysses, ring_degree=ring, cfg_degree=cfg)
    out = tmp_path / "latents.pt"
    launch(_generate_rank, world, config, tiny_folder, asdict(request), out, backend="gloo", timeout_s=120)
    expected = tiny_engine.generate(request).latents
    assert relative_error(torch.load(out), expected) < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(world_size=4, ulysses_degree=2, ring_degree=1), "must equal the number of processes"),
        (dict(world_size=2, ulysses_degree=1, ring_degree=1, cfg_degree=3), "cfg_degree"),
    ],
)
def test_parallel_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


def test_parallel_ulysses_degree_must_divide_the_heads() -> None:
    with pytest.raises(ValueError, match="attention heads"):
        ParallelConfig(world_size=4, ulysses_degree=4).check_heads(6)


def test_parallel_options_fill_in_the_missing_degree() -> None:
    assert ParallelConfig.from_options(num_gpus=4, ulysses_degree=None, ring_degree=None, cfg_parallel=True) == (
        ParallelConfig(world_size=4, ulysses_degree=2, ring_degree=1, cfg_degree=2)
    )
    assert ParallelConfig.from_options(num_gpus=4, ulysses_degree=None, ring_degree=4, cfg_parallel=False) == (
        ParallelConfig(world_size=4, ulysses_degree=1, ring_degree=4, cfg_degree=1)
    )


# -- a worker's long-lived group of ranks ------------------------------------------------------


def test_parallel_engine_group_generates_like_one_engine_and_fails_fast_when_a_rank_dies(
    tiny_engine, tiny_folder, make_request, tmp_path: Path
) -> None:
    import os
    import signal
    import time
    from dataclasses import replace

    from engine.errors import RankFailure
    from engine.lora.synthetic import random_adapter, write_adapter
    from engine.parallel.group import EngineGroup
    from spec.lora_keys import DIT_SHAPES
    from spec.request import LoraRef

    request = make_request(num_inference_steps=3)
    expected = tiny_engine.generate(request).latents
    path = write_adapter(tmp_path / "style.safetensors", random_adapter(DIT_SHAPES["tiny-wan"], 4, "wan", seed=2))
    lora_request = replace(request, loras=(LoraRef("style", str(path), 0.7),))
    expected_lora = tiny_engine.generate(lora_request).latents  # before the group: its state is process-wide
    assert relative_error(expected_lora, expected) > 1e-3
    group = EngineGroup(str(tiny_folder), ParallelConfig(world_size=2, cfg_degree=2), backend="gloo", timeout_s=60)
    try:
        assert relative_error(group.generate(request).latents, expected) < 1e-5
        assert relative_error(group.generate(request).latents, expected) < 1e-5  # warm ranks, second job

        # LoRA adapters travel in the request (as paths): every rank applies them
        assert relative_error(group.generate(lora_request).latents, expected_lora) < 1e-5

        def kill_rank_one(info) -> None:  # type: ignore[no-untyped-def]
            if info.step == 1:
                os.kill(group.pids[0], signal.SIGKILL)

        started = time.monotonic()
        with pytest.raises(RankFailure, match="vidq-rank-1 died"):
            group.generate(make_request(num_inference_steps=20), on_step=kill_rank_one)
        assert time.monotonic() - started < 30  # an error, not a hang until the timeout
        assert not group.healthy
    finally:
        group.close()
