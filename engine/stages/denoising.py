"""The denoising loop: UniPC over the DiT's flow predictions, CFG as one batch of two."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch
from diffusers import UniPCMultistepScheduler

from engine.models.wan_transformer import WanTransformer3DModel
from engine.request import StepInfo
from engine.stages.base import Stage
from engine.stages.state import PipelineState


class DenoisingStage(Stage):
    """Runs `num_inference_steps` solver steps and reports each one through `state.on_step`.

    With guidance > 1 the conditional and unconditional passes share one transformer call
    (batch [cond, uncond]); the guided prediction is uncond + g * (cond - uncond), as in
    WanPipeline. Latents stay float32 between steps; the transformer sees its own dtype.

    `on_step` runs after every step, on this thread; whatever it raises propagates out of the
    loop and ends the generation (that is how a caller cancels). A fresh scheduler is built per
    request, since UniPC keeps per-run state.
    """

    name: ClassVar[str] = "denoising"
    requires: ClassVar[tuple[str, ...]] = ("latents", "prompt_embeds")
    provides: ClassVar[tuple[str, ...]] = ("latents",)

    def __init__(
        self, device: torch.device, transformer: WanTransformer3DModel, scheduler_config: dict[str, Any]
    ) -> None:
        super().__init__(device)
        self.transformer = transformer
        self.scheduler_config = scheduler_config

    def forward(self, state: PipelineState) -> None:
        request = state.request
        if request.do_cfg and state.negative_prompt_embeds is None:
            raise ValueError("guidance > 1 needs negative prompt embeddings")
        dtype = self.transformer.proj_out.weight.dtype
        scheduler = UniPCMultistepScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(request.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)  # avoids a device->host sync to look the index up each step
        timesteps = scheduler.timesteps

        latents = state.latents  # [1, C, F', H', W'] float32
        if request.do_cfg:
            context = torch.cat([state.prompt_embeds, state.negative_prompt_embeds]).to(dtype)  # [2, L, D]
        else:
            context = state.prompt_embeds.to(dtype)  # [1, L, D]
        batch = context.shape[0]

        start = time.perf_counter()
        for index, t in enumerate(timesteps):
            model_input = latents.to(dtype).expand(batch, -1, -1, -1, -1)  # [batch, C, F', H', W']
            flow = self.transformer(model_input, t.expand(batch), context)  # [batch, C, F', H', W']
            if request.do_cfg:
                flow_cond, flow_uncond = flow.chunk(2)
                flow = flow_uncond + request.guidance_scale * (flow_cond - flow_uncond)
            latents = scheduler.step(flow, t, latents, return_dict=False)[0]
            if state.on_step is not None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # so elapsed_s is work done, not work queued
                state.on_step(StepInfo(index + 1, len(timesteps), time.perf_counter() - start, latents))
        state.latents = latents
