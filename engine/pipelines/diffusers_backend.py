"""A diffusers pipeline behind vidq's pipeline interface: stages, per-step progress, cancel, memory.

`DiffusersPipeline` runs one family's own diffusers pipeline (see `diffusers_families`) as vidq
stages over a `PipelineState`, so the engine, the worker and the CLI treat it like the native Wan
pipeline:

1. text encoding: the pipeline's `encode_prompt`;
2. denoising: the pipeline's `__call__` on those embeddings with `output_type="latent"`; every step
   reaches `on_step` through `callback_on_step_end`, and whatever `on_step` raises (a cancel, a lost
   job) propagates out of the loop, so the render stops at the next step boundary;
3. decoding: the family's decode (the pipeline's own last lines), VAE tiling as the memory plan says;
4. encoding: the shared mp4 + thumbnail writer.

The `Stage` base class times each stage and records its peak CUDA memory, as on the native path.
The noise comes from a CPU generator seeded with the request's seed (the native convention), used
for the whole call and then for the decode, exactly as one plain `pipe(..., generator=g)` call
would use it: the frames equal plain diffusers' for the same seed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from engine.checkpoint import Checkpointer
from engine.pipelines.base import Pipeline, result_of
from engine.pipelines.diffusers_families import DiffusersFamily, Pipe
from engine.stages.base import Stage
from engine.stages.decoding import to_uint8_frames
from engine.stages.encoding import EncodingStage
from engine.stages.state import PipelineState
from spec.memory import MemoryPlan
from spec.request import GenerationRequest, GenerationResult, StepInfo
from spec.stages import Stage as StageName

# Steps of the throwaway run that compiles a new shape (Mochi's sigma schedule needs two).
WARM_UP_STEPS = 2
# A context manager factory entered around the denoising loop (attention kernel choice).
AroundLoop = Callable[[], contextlib.AbstractContextManager[object]]


class DiffusersTextEncodingStage(Stage):
    """`encode_prompt` of the family's pipeline; the embeddings become `__call__` arguments.

    `encoder_device` is where the text encoders run (the CPU when the plan keeps them there); the
    embeddings always land on `device`.
    """

    name: ClassVar[str] = StageName.TEXT_ENCODING
    provides: ClassVar[tuple[str, ...]] = ("conditioning",)

    def __init__(
        self, device: torch.device, family: DiffusersFamily, pipe: Pipe, encoder_device: torch.device | None = None
    ) -> None:
        super().__init__(device)
        self.family = family
        self.pipe = pipe
        self.encoder_device = encoder_device or device

    def forward(self, state: PipelineState) -> None:
        encoded = self.family.encode(self.pipe, state.request, self.encoder_device)
        state.conditioning = {
            name: tensor.to(self.device) if tensor is not None else None for name, tensor in encoded.items()
        }


class DiffusersDenoisingStage(Stage):
    """The family's pipeline on precomputed embeddings, stopped before decoding.

    `variants` maps a pipeline class name to the pipeline object sharing this model's components
    (text-to-video and, for LTX, image-to-video from the same weights).

    With `warm_up` (the engine sets it when the blocks are compiled), the first request of each
    shape first runs `WARM_UP_STEPS` throwaway steps on its own generator, so compilation happens
    there and is reported as the "compile" timing, as on the native path; the request's own steps
    (and their progress and ETA) then run at full speed, and its noise is untouched.
    """

    name: ClassVar[str] = StageName.DENOISING
    requires: ClassVar[tuple[str, ...]] = ("conditioning", "generator")
    provides: ClassVar[tuple[str, ...]] = ("latents",)

    def __init__(
        self,
        device: torch.device,
        family: DiffusersFamily,
        variants: dict[str, Pipe],
        around_loop: AroundLoop,
        *,
        warm_up: bool = False,
    ) -> None:
        super().__init__(device)
        self.family = family
        self.variants = variants
        self.around_loop = around_loop
        self.warm_up = warm_up
        self._warm_shapes: set[tuple[object, ...]] = set()

    def pipe_for(self, request: GenerationRequest) -> Pipe:
        name = self.family.pipeline_class(request.image is not None)
        if name not in self.variants:
            needs = "takes no input image" if request.image is not None else "needs an input image"
            raise ValueError(f"this {self.family.name} checkpoint {needs}")
        return self.variants[name]

    def forward(self, state: PipelineState) -> None:
        request = state.request
        pipe = self.pipe_for(request)
        kwargs: dict[str, Any] = {
            **state.conditioning,
            **self.family.call_kwargs(request),
            "height": request.height,
            "width": request.width,
            "num_frames": request.num_frames,
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "generator": state.generator,
            "output_type": "latent",
            "return_dict": False,
        }
        if request.image is not None:
            kwargs["image"] = request.image
        if self.warm_up:
            self._warm_up_for(pipe, kwargs, state)
        reporter = _StepReporter(state, self.device, request.num_inference_steps)
        with self.around_loop():
            latents = pipe(**kwargs, callback_on_step_end=reporter)[0]
        reporter.flush()
        state.latents = latents

    def _warm_up_for(self, pipe: Pipe, kwargs: dict[str, Any], state: PipelineState) -> None:
        request = state.request
        key = (type(pipe).__name__, request.height, request.width, request.num_frames, request.do_cfg)
        if key in self._warm_shapes:
            return
        started = time.perf_counter()
        throwaway = {**kwargs, "num_inference_steps": WARM_UP_STEPS, "generator": torch.Generator("cpu").manual_seed(0)}
        with self.around_loop():
            pipe(**throwaway)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._warm_shapes.add(key)
        state.stage_timings_s["compile"] = time.perf_counter() - started


class DiffusersDecodingStage(Stage):
    """The family's decode, tiled when the request's memory plan says so; frames as uint8."""

    name: ClassVar[str] = StageName.DECODING
    requires: ClassVar[tuple[str, ...]] = ("latents", "generator")
    provides: ClassVar[tuple[str, ...]] = ("frames",)

    def __init__(self, device: torch.device, family: DiffusersFamily, pipe: Pipe) -> None:
        super().__init__(device)
        self.family = family
        self.pipe = pipe

    def forward(self, state: PipelineState) -> None:
        vae = self.pipe.vae
        plan = state.memory_plan
        if plan is not None and plan.vae_tiling:
            vae.enable_tiling()  # diffusers' own tiles for this VAE
        else:
            vae.disable_tiling()
        video = self.family.decode(self.pipe, state.latents, state.request, state.generator)  # [1, 3, F, H, W]
        state.frames = to_uint8_frames(video).cpu().numpy()


class _StepReporter:
    """`callback_on_step_end` that turns diffusers' steps into `on_step(StepInfo)` calls.

    On CUDA step i is reported once step i+1 is queued, after an event recorded at the end of step
    i completes (no device-wide sync), as the native loop does; `flush` reports the last one. On the
    CPU each step is reported at once. An exception from `on_step` leaves the pipeline's loop.
    """

    def __init__(self, state: PipelineState, device: torch.device, total: int) -> None:
        self.state = state
        self.device = device
        self.total = total
        self.start = time.perf_counter()
        self.pending: tuple[int, torch.cuda.Event | None, torch.Tensor] | None = None

    def __call__(self, pipe: Pipe, index: int, timestep: torch.Tensor, tensors: dict[str, Any]) -> dict[str, Any]:
        if self.state.on_step is None:
            return {}
        latents = tensors["latents"]
        if self.device.type != "cuda":
            self._report((index + 1, None, latents))
            return {}
        done = torch.cuda.Event()
        done.record()
        if self.pending is not None:
            self._report(self.pending)
        self.pending = (index + 1, done, latents)
        return {}

    def flush(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self._report(pending)

    def _report(self, pending: tuple[int, torch.cuda.Event | None, torch.Tensor]) -> None:
        step, done, latents = pending
        if done is not None:
            done.synchronize()
        assert self.state.on_step is not None
        self.state.on_step(StepInfo(step, self.total, time.perf_counter() - self.start, latents))


class DiffusersPipeline(Pipeline):
    """A family's diffusers pipeline as vidq stages (see the module docstring).

    `variants` holds the pipeline objects by class name, all sharing one set of components;
    `around_loop` is entered around the denoising loop (the attention kernel choice);
    `text_encoder_device` is where the text encoders run (default: `device`); `warm_up` compiles
    each new shape in a throwaway run first (see `DiffusersDenoisingStage`).
    """

    def __init__(
        self,
        family: DiffusersFamily,
        variants: dict[str, Pipe],
        device: torch.device,
        around_loop: AroundLoop = contextlib.nullcontext,
        text_encoder_device: torch.device | None = None,
        warm_up: bool = False,
    ) -> None:
        self.family = family
        self.variants = variants
        base = next(iter(variants.values()))
        self.pipe = base
        super().__init__(
            [
                DiffusersTextEncodingStage(device, family, base, text_encoder_device),
                DiffusersDenoisingStage(device, family, variants, around_loop, warm_up=warm_up),
                DiffusersDecodingStage(device, family, base),
                EncodingStage(device),
            ]
        )

    @torch.inference_mode()
    def __call__(
        self,
        request: GenerationRequest,
        on_step: Callable[[StepInfo], None] | None = None,
        on_stage: Callable[[str], None] | None = None,
        output_path: Path | None = None,
        memory_plan: MemoryPlan | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> GenerationResult:
        """Run the stages. `checkpointer` is accepted for the engine's one signature but not used:
        diffusers' loops expose no resumable state, so a render of these families that loses its
        worker starts again from step 0 (`result.resumed_from_step` stays None)."""
        del checkpointer
        state = self.run(
            PipelineState(
                request=request,
                on_step=on_step,
                on_stage=on_stage,
                output_path=output_path,
                memory_plan=memory_plan,
                generator=torch.Generator("cpu").manual_seed(request.seed),
            )
        )
        return result_of(state)
