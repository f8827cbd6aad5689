"""Denoising checkpoints: a generation resumed from step k is bitwise the uninterrupted one (CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.checkpoint import DenoisingCheckpoint


class Interrupted(Exception):
    """Stands for the worker dying: raised from on_step after a checkpoint was saved."""


class MemoryCheckpointer:
    """Keeps the last checkpoint as bytes, as a store would, and saves after the steps it is given."""

    def __init__(self, save_after: set[int]) -> None:
        self.save_after = save_after
        self.blob: bytes | None = None
        self.saved_steps: list[int] = []
        self.resumed_steps: list[int] = []

    def load(self) -> DenoisingCheckpoint | None:
        return DenoisingCheckpoint.from_bytes(self.blob) if self.blob is not None else None

    def resumed(self, checkpoint: DenoisingCheckpoint) -> None:
        self.resumed_steps.append(checkpoint.step)

    def due(self, step: int, total: int) -> bool:
        return step in self.save_after

    def save(self, checkpoint: DenoisingCheckpoint) -> None:
        self.blob = checkpoint.to_bytes()
        self.saved_steps.append(checkpoint.step)


def _stop_at(step: int):
    def on_step(info) -> None:
        if info.step == step:
            raise Interrupted

    return on_step


@pytest.mark.parametrize("resume_after", [1, 3, 5])
def test_a_resumed_generation_is_bitwise_the_uninterrupted_one(tiny_engine, make_request, resume_after) -> None:
    request = make_request(num_inference_steps=6)
    reference = tiny_engine.generate(request)

    checkpointer = MemoryCheckpointer(save_after={resume_after})
    with pytest.raises(Interrupted):
        tiny_engine.generate(request, on_step=_stop_at(resume_after + 1), checkpointer=checkpointer)
    assert checkpointer.saved_steps == [resume_after]

    steps: list[int] = []
    resumed = tiny_engine.generate(request, on_step=lambda info: steps.append(info.step), checkpointer=checkpointer)
    assert checkpointer.resumed_steps == [resume_after]
    assert resumed.resumed_from_step == resume_after
    assert steps == list(range(resume_after + 1, 7))  # only the remaining steps ran
    assert torch.equal(resumed.latents, reference.latents)
    assert np.array_equal(resumed.frames, reference.frames)


def test_without_restoring_the_scheduler_the_output_differs(tiny_engine, make_request) -> None:
    """The scheduler's history matters: latents alone do not reproduce the run (so the test above
    proves the scheduler state is carried)."""
    request = make_request(num_inference_steps=6)
    reference = tiny_engine.generate(request)
    checkpointer = MemoryCheckpointer(save_after={3})
    with pytest.raises(Interrupted):
        tiny_engine.generate(request, on_step=_stop_at(4), checkpointer=checkpointer)
    checkpoint = DenoisingCheckpoint.from_bytes(checkpointer.blob)
    checkpoint.scheduler_state = {}
    checkpointer.blob = checkpoint.to_bytes()
    resumed = tiny_engine.generate(request, checkpointer=checkpointer)
    assert resumed.resumed_from_step == 3
    assert not torch.equal(resumed.latents, reference.latents)


def test_a_checkpoint_of_another_request_is_ignored(tiny_engine, make_request) -> None:
    checkpointer = MemoryCheckpointer(save_after={2})
    with pytest.raises(Interrupted):
        tiny_engine.generate(
            make_request(num_inference_steps=4, seed=1), on_step=_stop_at(3), checkpointer=checkpointer
        )
    other = make_request(num_inference_steps=4, seed=2)
    resumed = tiny_engine.generate(other, checkpointer=checkpointer)
    assert resumed.resumed_from_step is None
    assert checkpointer.resumed_steps == []
    assert torch.equal(resumed.latents, tiny_engine.generate(other).latents)


def test_checkpoints_are_saved_when_due_and_never_after_the_last_step(tiny_engine, make_request) -> None:
    checkpointer = MemoryCheckpointer(save_after={1, 2, 3, 4})
    tiny_engine.generate(make_request(num_inference_steps=4), checkpointer=checkpointer)
    assert checkpointer.saved_steps == [1, 2, 3]
    assert DenoisingCheckpoint.from_bytes(checkpointer.blob).step == 3


def test_a_foreign_payload_is_refused() -> None:
    with pytest.raises(ValueError, match="not a denoising checkpoint"):
        DenoisingCheckpoint.from_bytes(b"not a checkpoint")
