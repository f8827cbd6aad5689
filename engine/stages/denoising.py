"""The denoising loop: UniPC over the DiT's flow predictions, CFG as one batch of two."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from diffusers import UniPCMultistepScheduler

from engine.acceleration.calibration import StepCacheCalibration
from engine.acceleration.fp8 import Fp8UnsupportedError, Fp8Weights
from engine.acceleration.step_cache import StepCache
from engine.checkpoint import DenoisingCheckpoint, capture_scheduler, restore_scheduler
from engine.models.wan_transformer import WanTransformer3DModel
from engine.parallel.state import get_parallel_state
from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.acceleration import AccelerationOptions
from spec.request import GenerationRequest, StepInfo
from spec.stages import Stage as StageName


class DenoisingStage(Stage):
    """Runs `num_inference_steps` solver steps and reports each one through `state.on_step`.

    With guidance > 1 the conditional and unconditional passes share one transformer call
    (batch [cond, uncond]); the guided prediction is uncond + g * (cond - uncond), as in
    WanPipeline. Latents stay float32 between steps; the transformer sees its own dtype.

    `on_step` runs after every step, on this thread; whatever it raises propagates out of the
    loop and ends the generation (that is how a caller cancels). A fresh scheduler is built per
    request, since UniPC keeps per-run state.

    With `state.checkpointer` the loop starts from the checkpointer's last matching checkpoint
    (latents, scheduler state and generator state restored, so the remaining steps compute exactly
    what an uninterrupted run would) and hands it a new one whenever it says one is due.

    Fast modes (`request.acceleration`, see `engine.acceleration`): a step cache is attached
    around the transformer's blocks for this request only, and FP8 linears are switched on for
    it only (`fp8` holds the model's FP8 weights once the engine has made them). With the
    default lossless options neither is touched, so the output is the plain path's bit for bit.
    What was done goes to `state.acceleration`.

    Variants, as diffusers' WanPipeline / WanImageToVideoPipeline run them:
    - two experts (`transformer_2`, `boundary_ratio`): steps with t >= boundary_ratio x 1000 run
      `transformer` with `guidance_scale`, the rest `transformer_2` with `guidance_scale_2`;
      `expert_swap`, when set, is entered around each expert's steps (it brings the expert's
      weights onto the GPU and, on leaving, sends them back: the planner's "swap" placement);
      the time it takes is the "expert_swap" timing;
    - image conditioning (`state.condition`): concatenated to the latents on the channel axis
      (Wan2.1 I2V), or, with `expand_timesteps` (Wan2.2 TI2V), written over the first latent
      frame with that frame's tokens at timestep 0; the final latents keep the clean frame.
    Fast modes on two experts: the step cache is attached to both and reset where the other
    expert takes over (`StepCache.start_segment`: no residual crosses the switch, the new
    expert's first steps are computed); `fp8` holds both experts' FP8 weights.
    """

    name: ClassVar[str] = StageName.DENOISING
    requires: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds")
    provides: ClassVar[tuple[str, ...]] = ("latents",)

    def __init__(
        self,
        device: torch.device,
        transformer: WanTransformer3DModel,
        scheduler_config: dict[str, Any],
        calibration: StepCacheCalibration | None = None,
        *,
        transformer_2: WanTransformer3DModel | None = None,
        boundary_ratio: float | None = None,
        expand_timesteps: bool = False,
    ) -> None:
        super().__init__(device)
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.boundary_ratio = boundary_ratio
        self.expand_timesteps = expand_timesteps
        self.scheduler_config = scheduler_config
        self.calibration = calibration or StepCacheCalibration()
        self.fp8: Fp8Weights | None = None  # set by the engine when the model's FP8 weights exist
        self.expert_swap: Callable[[int], contextlib.AbstractContextManager[object]] | None = None
        self._warm_shapes: set[tuple[object, ...]] = set()

    @property
    def experts(self) -> list[WanTransformer3DModel]:
        return [self.transformer] if self.transformer_2 is None else [self.transformer, self.transformer_2]

    def _expert_for(self, t: float, request: GenerationRequest) -> tuple[int, float | None]:
        """(expert index, guidance or None without CFG) for timestep t."""
        if self.transformer_2 is None or self.boundary_ratio is None:
            return 0, request.guidance_scale if request.do_cfg else None
        boundary = self.boundary_ratio * self.scheduler_config.get("num_train_timesteps", 1000)
        if t >= boundary:
            return 0, request.guidance_scale if request.do_cfg else None
        guidance_2 = request.guidance_scale_2 if request.guidance_scale_2 is not None else request.guidance_scale
        return 1, guidance_2 if request.do_cfg else None

    def _precision(self, options: AccelerationOptions) -> contextlib.AbstractContextManager[None]:
        if not options.fp8:
            return contextlib.nullcontext()
        if self.fp8 is None:
            raise Fp8UnsupportedError("this engine has no FP8 weights (FP8 unsupported here, or they did not fit)")
        return self.fp8.enabled()

    def forward(self, state: PipelineState) -> None:
        request = state.request
        if request.do_cfg and state.negative_prompt_embeds is None:
            raise ValueError("guidance > 1 needs negative prompt embeddings")
        dtype = self.transformer.proj_out.weight.dtype
        scheduler_config = self.scheduler_config
        if request.flow_shift is not None:  # a per-request shift (e.g. a distilled adapter's)
            scheduler_config = {**scheduler_config, "flow_shift": request.flow_shift}
        scheduler = UniPCMultistepScheduler.from_config(scheduler_config)
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)  # avoids a device->host sync to look the index up each step
        timesteps = scheduler.timesteps
        # Which expert runs each step and its guidance, decided on the host once (no per-step sync).
        plan = [self._expert_for(float(t), request) for t in timesteps.cpu()]

        latents = state.latents  # [1, C, F', H', W'] float32
        if request.do_cfg:
            context = torch.cat([state.prompt_embeds, state.negative_prompt_embeds]).to(dtype)  # [2, L, D]
        else:
            context = state.prompt_embeds.to(dtype)  # [1, L, D]
        conditioning = Conditioning.of(state, dtype, self.transformer.config.patch_size, self.expand_timesteps)

        options = request.acceleration
        cache = StepCache(options, self.calibration, len(timesteps)) if options.cache else None
        with self._precision(options):
            if self.transformer.compiled:
                self._warm_up(plan, latents, timesteps[0], context, conditioning, state, fp8=options.fp8)
            with cache.attached(*self.experts) if cache else contextlib.nullcontext():
                latents = self._loop(state, scheduler, timesteps, latents, context, plan, conditioning, cache)
                state.latents = conditioning.finalize(latents)
        computed = cache.report.computed_steps if cache else list(range(len(timesteps)))
        skipped = cache.report.skipped_steps if cache else []
        state.acceleration = {
            "preset": options.preset or ("none" if options.lossless else "custom"),
            "options": options.to_dict(),
            "steps_computed": len(computed),
            "steps_skipped": len(skipped),
            "skipped_steps": skipped,
            "precision": self._precision_name(options),
        }

    def _precision_name(self, options: AccelerationOptions) -> str:
        if options.fp8:
            return "fp8-emulated" if self.fp8 is not None and self.fp8.emulate else "fp8"
        return str(self.transformer.proj_out.weight.dtype).removeprefix("torch.")

    def _loop(
        self,
        state: PipelineState,
        scheduler: UniPCMultistepScheduler,
        timesteps: torch.Tensor,
        latents: torch.Tensor,
        context: torch.Tensor,
        plan: list[tuple[int, float | None]],
        conditioning: Conditioning,
        cache: StepCache | None,
    ) -> torch.Tensor:
        """The solver steps; returns the final latents [1, C, F', H', W'] float32."""
        # Progress without stalling the GPU: step i is reported once step i+1 is already queued,
        # by waiting on an event recorded after step i (never a device-wide synchronize), so the
        # GPU always has the next step's work while the host runs the callback.
        total = len(timesteps)
        first = 0
        if state.checkpointer is not None:
            first, latents = self._resume(state, scheduler, latents, total)
        pending: tuple[int, torch.cuda.Event | None, torch.Tensor] | None = None
        start = time.perf_counter()
        experts = self.experts
        with contextlib.ExitStack() as swap:
            current: int | None = None
            for index in range(first, total):
                t = timesteps[index]
                expert, guidance = plan[index]
                if expert != current:  # the boundary: release the last expert, bring in this one
                    swap.close()
                    if self.expert_swap is not None:
                        swap.enter_context(self._timed_swap(expert, state))
                    if cache is not None and (current is not None or index > 0):
                        # nothing of the last expert's is reused; a resumed run (index > 0 on
                        # entry) has nothing cached either, and warms up the same way
                        cache.start_segment(index)
                    current = expert
                if cache is not None:
                    cache.begin_step(index)
                flow = self._predict(experts[expert], latents, t, context, conditioning, guidance)
                latents = scheduler.step(flow, t, latents, return_dict=False)[0]
                if state.checkpointer is not None and index + 1 < total and state.checkpointer.due(index + 1, total):
                    state.checkpointer.save(
                        DenoisingCheckpoint(
                            step=index + 1,
                            total=total,
                            fingerprint=state.checkpoint_fingerprint,
                            latents=latents,
                            scheduler_state=capture_scheduler(scheduler),
                            rng_state=state.generator.get_state() if state.generator is not None else None,
                        )
                    )
                if state.on_step is None:
                    continue
                if self.device.type != "cuda":  # nothing runs ahead on the CPU: report at once
                    self._report(state, (index + 1, None, latents), total, start)
                    continue
                done = torch.cuda.Event()
                done.record()
                if pending is not None:
                    self._report(state, pending, total, start)
                pending = (index + 1, done, latents)
        if pending is not None:
            self._report(state, pending, total, start)
        return latents

    def _resume(
        self, state: PipelineState, scheduler: UniPCMultistepScheduler, latents: torch.Tensor, total: int
    ) -> tuple[int, torch.Tensor]:
        """(first step index to run, latents): from the checkpointer's last checkpoint when it
        belongs to this model and request, else (0, the fresh noise)."""
        assert state.checkpointer is not None
        checkpoint = state.checkpointer.load()
        if (
            checkpoint is None
            or checkpoint.fingerprint != state.checkpoint_fingerprint
            or checkpoint.total != total
            or not 0 < checkpoint.step < total
            or tuple(checkpoint.latents.shape) != tuple(latents.shape)
        ):
            return 0, latents
        restore_scheduler(scheduler, checkpoint.scheduler_state, self.device)
        if state.generator is not None and checkpoint.rng_state is not None:
            state.generator.set_state(checkpoint.rng_state)
        state.resumed_from_step = checkpoint.step
        state.checkpointer.resumed(checkpoint)
        return checkpoint.step, checkpoint.latents.to(device=self.device, dtype=latents.dtype)

    @contextlib.contextmanager
    def _timed_swap(self, expert: int, state: PipelineState) -> Iterator[None]:
        """Enter `expert_swap(expert)` and add the time it takes (the host->GPU copy of the
        expert, synchronised) to the "expert_swap" timing; leaving releases the expert."""
        assert self.expert_swap is not None
        started = time.perf_counter()
        with self.expert_swap(expert):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            state.stage_timings_s["expert_swap"] = state.stage_timings_s.get("expert_swap", 0.0) + (
                time.perf_counter() - started
            )
            yield

    def _predict(
        self,
        model: WanTransformer3DModel,
        latents: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        conditioning: Conditioning,
        guidance_scale: float | None,
    ) -> torch.Tensor:
        """The (guided) flow for latents [1, C, F', H', W'] at timestep t."""
        model_input = conditioning.model_input(latents).to(context.dtype)  # [1, C_in, F', H', W']
        timestep = conditioning.timestep(t)  # [1] or [1, S]
        image = conditioning.image_embeds  # [1, L_img, D_img] or None
        parallel = get_parallel_state()
        if guidance_scale is not None and parallel is not None and parallel.config.cfg_degree == 2:
            # CFG parallel: this rank runs one branch; the two meet once per step.
            branch = context[parallel.cfg_rank : parallel.cfg_rank + 1]  # [1, L, D]
            flow = model(model_input, timestep, branch, image)  # [1, C, F', H', W']
            flows = [torch.empty_like(flow) for _ in range(2)]
            dist.all_gather(flows, flow.contiguous(), group=parallel.cfg_group)
            flow_cond, flow_uncond = flows  # cfg rank 0 holds the conditional branch
            return flow_uncond + guidance_scale * (flow_cond - flow_uncond)
        batch = context.shape[0]
        model_input = model_input.expand(batch, -1, -1, -1, -1)  # [batch, C_in, F', H', W']
        if image is not None:
            image = image.expand(batch, -1, -1)  # the same image tokens for both CFG branches
        flow = model(model_input, timestep.expand(batch, *timestep.shape[1:]), context, image)
        if guidance_scale is None:
            return flow
        flow_cond, flow_uncond = flow.chunk(2)
        return flow_uncond + guidance_scale * (flow_cond - flow_uncond)

    def _warm_up(
        self,
        plan: list[tuple[int, float | None]],
        latents: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        conditioning: Conditioning,
        state: PipelineState,
        *,
        fp8: bool = False,
    ) -> None:
        """Compile for this input shape (and precision) before the timed loop, and report how long
        it took. Every expert the request uses is warmed. The compiled code stays with the model,
        so only the first request of a shape pays.
        """
        experts = self.experts
        key = (tuple(latents.shape), tuple(context.shape), context.dtype, conditioning.kind, fp8)
        if key in self._warm_shapes:
            return
        started = time.perf_counter()
        for expert in sorted({index for index, _ in plan}):
            with contextlib.ExitStack() as swap:
                if self.expert_swap is not None:
                    swap.enter_context(self.expert_swap(expert))
                guidance = next(g for index, g in plan if index == expert)
                self._predict(experts[expert], latents, t, context, conditioning, guidance)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._warm_shapes.add(key)
        state.stage_timings_s["compile"] = time.perf_counter() - started

    @staticmethod
    def _report(
        state: PipelineState,
        pending: tuple[int, torch.cuda.Event | None, torch.Tensor],
        total: int,
        start: float,
    ) -> None:
        step, done, latents = pending
        if done is not None:
            done.synchronize()  # waits for step `step` only; later steps keep running
        assert state.on_step is not None
        state.on_step(StepInfo(step, total, time.perf_counter() - start, latents))


@dataclass(frozen=True)
class Conditioning:
    """How the image condition enters each step (see `DenoisingStage`); "none" for text-to-video.

    kind: "none" | "concat" (condition [1, 4 + z, F', h, w] behind the latents) | "first_frame"
    (condition [1, z, 1, h, w] over latent frame 0, whose tokens get timestep 0).
    """

    kind: str
    condition: torch.Tensor | None = None
    first_frame_mask: torch.Tensor | None = None  # [1, 1, F', h, w]: 0 on the clean frame
    token_mask: torch.Tensor | None = None  # [1, S]: the same per patch token
    image_embeds: torch.Tensor | None = None

    @classmethod
    def of(
        cls, state: PipelineState, dtype: torch.dtype, patch_size: tuple[int, int, int], expand_timesteps: bool
    ) -> Conditioning:
        image_embeds = state.image_embeds.to(dtype) if state.image_embeds is not None else None
        if state.condition is None:
            return cls("none", image_embeds=image_embeds)
        if not expand_timesteps:
            return cls("concat", condition=state.condition, image_embeds=image_embeds)
        mask = state.first_frame_mask
        assert mask is not None
        p_t, p_h, p_w = patch_size
        token_mask = mask[0, 0, ::p_t, ::p_h, ::p_w].flatten().unsqueeze(0)  # [1, S]
        return cls("first_frame", state.condition, mask, token_mask, image_embeds)

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        if self.kind == "concat":
            return torch.cat([latents, self.condition], dim=1)  # [1, C + 4 + z, F', h, w]
        if self.kind == "first_frame":
            return self.finalize(latents)
        return latents

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """[1] for one timestep per sample, [1, S] with the clean frame's tokens at 0."""
        if self.kind == "first_frame":
            return self.token_mask * t
        return t.expand(1)

    def finalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The latents with the clean first frame put back (TI2V image-to-video; else unchanged)."""
        if self.kind != "first_frame":
            return latents
        return (1 - self.first_frame_mask) * self.condition + self.first_frame_mask * latents
