"""Denoising checkpoints: the loop's whole state after a step, so a generation can resume there.

A long render that loses its process (a killed worker, a preempted GPU) should not start over from
step 0. The denoising stage hands a :class:`DenoisingCheckpoint` to a caller-supplied
:class:`Checkpointer` whenever it says one is due, and on start asks it for the last one. Where
checkpoints live (object storage, a folder) is the caller's business: the engine only defines the
state and its byte format, so it imports nothing of the service.

What makes a resumed run bitwise identical to an uninterrupted one (on the same device and build):

- the latents after the step (float32, exact);
- the scheduler's per-run state: every plain attribute of the scheduler object (UniPC keeps its
  previous model outputs, timesteps, order and step index there), captured generically so a
  scheduler with other fields is covered too;
- the state of the pipeline's random generator (drawn from for the initial noise; a stochastic
  sampler would keep drawing from it);
- a fingerprint of the model and the request, so a checkpoint is never applied to another job.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import torch

from spec.request import GenerationRequest

FORMAT_VERSION = 1


def request_fingerprint(model_id: str, request: GenerationRequest) -> str:
    """A short digest of everything that decides the denoising trajectory (an input image by its pixels)."""
    fields = asdict(replace(request, image=None))
    if request.image is not None:
        from engine.stages.image_encoding import image_digest

        fields["image"] = image_digest(request.image)
    payload = json.dumps({"model": model_id, "request": fields, "v": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass
class DenoisingCheckpoint:
    """The denoising loop after `step` of `total` steps (1-based: `step` steps are done).

    `latents` [1, C, F', H', W'] float32; `scheduler_state` maps scheduler attribute names to plain
    values (tensors, numbers, lists of them); `rng_state` is the pipeline generator's state (a uint8
    tensor) or None when the pipeline has no generator.
    """

    step: int
    total: int
    fingerprint: str
    latents: torch.Tensor
    scheduler_state: dict[str, Any]
    rng_state: torch.Tensor | None = None

    def to_bytes(self) -> bytes:
        """A `torch.save` payload of CPU tensors and plain values (loadable with `weights_only`)."""
        payload = {
            "version": FORMAT_VERSION,
            "step": self.step,
            "total": self.total,
            "fingerprint": self.fingerprint,
            "latents": self.latents.detach().cpu(),
            "scheduler_state": _to_cpu(self.scheduler_state),
            "rng_state": self.rng_state,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DenoisingCheckpoint:
        """Parse `to_bytes` output; raises ValueError for a payload of another format."""
        try:
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated upload, foreign file
            raise ValueError(f"not a denoising checkpoint: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("version") != FORMAT_VERSION:
            raise ValueError("not a denoising checkpoint of this engine's format")
        return cls(
            step=int(payload["step"]),
            total=int(payload["total"]),
            fingerprint=str(payload["fingerprint"]),
            latents=payload["latents"],
            scheduler_state=payload["scheduler_state"],
            rng_state=payload["rng_state"],
        )


class Checkpointer(Protocol):
    """What the denoising loop calls; implemented by the caller (the worker stores to S3).

    `load` runs once before the first step; `resumed` once if the returned checkpoint is used (it
    may be refused: another request's fingerprint, another step count); `due(step, total)` after
    every step but the last, and `save` when it answered True. Exceptions from `save` propagate
    and end the generation, so an implementation that tolerates storage outages catches its own.
    """

    def load(self) -> DenoisingCheckpoint | None: ...

    def resumed(self, checkpoint: DenoisingCheckpoint) -> None: ...

    def due(self, step: int, total: int) -> bool: ...

    def save(self, checkpoint: DenoisingCheckpoint) -> None: ...


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(item) for item in value)
    return False


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(item) for item in value)
    return value


def capture_scheduler(scheduler: object) -> dict[str, Any]:
    """Every plain attribute of `scheduler` (its config object and other helpers are skipped).

    Tensors are cloned, so later in-place updates of the live scheduler cannot change the snapshot.
    """

    def clone(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().clone()
        if isinstance(value, list | tuple):
            return type(value)(clone(item) for item in value)
        return value

    return {name: clone(value) for name, value in vars(scheduler).items() if _plain(value)}


def restore_scheduler(scheduler: object, state: dict[str, Any], device: torch.device) -> None:
    """Set the captured attributes back on a scheduler prepared the same way (`set_timesteps`).

    A tensor goes to the device of the attribute it replaces (UniPC keeps `sigmas` on the CPU on
    purpose); tensors with no counterpart (the history lists) go to `device`.
    """

    def place(value: Any, like: Any) -> Any:
        if isinstance(value, torch.Tensor):
            target = like.device if isinstance(like, torch.Tensor) else device
            return value.to(target)
        if isinstance(value, list | tuple):
            return type(value)(place(item, None) for item in value)
        return value

    for name, value in state.items():
        setattr(scheduler, name, place(value, getattr(scheduler, name, None)))
