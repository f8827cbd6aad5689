"""The denoising loop: UniPC over the DiT's flow predictions, CFG as one batch of two."""

from __future__ import annotations

import contextlib
import time
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
from spec.request import StepInfo
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
    ) -> None:
        super().__init__(device)
        self.transformer = transformer
        self.scheduler_config = scheduler_config
        self.calibration = calibration or StepCacheCalibration()
        self.fp8: Fp8Weights | None = None  # set by the engine when the model's FP8 weights exist
        self._warm_shapes: set[tuple[object, ...]] = set()

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

        latents = state.latents  # [1, C, F', H', W'] float32
        if request.do_cfg:
            context = torch.cat([state.prompt_embeds, state.negative_prompt_embeds]).to(dtype)  # [2, L, D]
        else:
            context = state.prompt_embeds.to(dtype)  # [1, L, D]

        options = request.acceleration
        guidance = request.guidance_scale if request.do_cfg else None
        cache = StepCache(options, self.calibration, len(timesteps)) if options.cache else None
        with self._precision(options):
            if self.transformer.compiled:
                self._warm_up(latents, timesteps[0], context, guidance, state, fp8=options.fp8)
            with cache.attached(self.transformer) if cache else contextlib.nullcontext():
                state.latents = self._loop(state, scheduler, timesteps, latents, context, guidance, cache)
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
        guidance: float | None,
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
        for index in range(first, total):
            t = timesteps[index]
            if cache is not None:
                cache.begin_step(index)
            flow = self._predict(latents, t, context, guidance)
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

    def _predict(
        self, latents: torch.Tensor, t: torch.Tensor, context: torch.Tensor, guidance_scale: float | None
    ) -> torch.Tensor:
        """The (guided) flow for latents [1, C, F', H', W'] at timestep t."""
        parallel = get_parallel_state()
        if guidance_scale is not None and parallel is not None and parallel.config.cfg_degree == 2:
            # CFG parallel: this rank runs one branch; the two meet once per step.
            branch = context[parallel.cfg_rank : parallel.cfg_rank + 1]  # [1, L, D]
            flow = self.transformer(latents.to(context.dtype), t.expand(1), branch)  # [1, C, F', H', W']
            flows = [torch.empty_like(flow) for _ in range(2)]
            dist.all_gather(flows, flow.contiguous(), group=parallel.cfg_group)
            flow_cond, flow_uncond = flows  # cfg rank 0 holds the conditional branch
            return flow_uncond + guidance_scale * (flow_cond - flow_uncond)
        batch = context.shape[0]
        model_input = latents.to(context.dtype).expand(batch, -1, -1, -1, -1)  # [batch, C, F', H', W']
        flow = self.transformer(model_input, t.expand(batch), context)  # [batch, C, F', H', W']
        if guidance_scale is None:
            return flow
        flow_cond, flow_uncond = flow.chunk(2)
        return flow_uncond + guidance_scale * (flow_cond - flow_uncond)

    def _warm_up(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        guidance_scale: float | None,
        state: PipelineState,
        *,
        fp8: bool = False,
    ) -> None:
        """Compile for this input shape (and precision) before the timed loop, and report how long
        it took. The compiled code stays with the model, so only the first request of a shape pays.
        """
        key = (tuple(latents.shape), tuple(context.shape), context.dtype, fp8)
        if key in self._warm_shapes:
            return
        started = time.perf_counter()
        self._predict(latents, t, context, guidance_scale)
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
