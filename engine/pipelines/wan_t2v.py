"""Wan2.1 text-to-video: text encoding -> noise -> denoising -> VAE decoding -> mp4."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.acceleration.calibration import StepCacheCalibration
from engine.cache import LRUCache
from engine.checkpoint import Checkpointer, request_fingerprint
from engine.models.components import WanComponents
from engine.pipelines.base import Pipeline
from engine.stages.decoding import DecodingStage
from engine.stages.denoising import DenoisingStage
from engine.stages.encoding import EncodingStage
from engine.stages.latent_preparation import LatentPreparationStage
from engine.stages.state import OnStage, OnStep, PipelineState
from engine.stages.text_encoding import EmbeddingKey, EmbeddingPair, TextEncodingStage
from spec.memory import MemoryPlan
from spec.request import GenerationRequest, GenerationResult

EMBEDDING_CACHE_SIZE = 32


class WanT2VPipeline(Pipeline):
    """The stages of WanPipeline, rebuilt around our DiT and a batched-CFG denoising loop.

    `scheduler_overrides` replace fields of the checkpoint's scheduler config (the engine passes
    the registry's `flow_shift`). `text_encoder_device` is where the text encoder runs (the CPU
    when it is kept off the GPU); its embeddings always land on `device`. `calibration` holds the
    model's published step-cache numbers (`engine.acceleration.calibration`).
    """

    def __init__(
        self,
        components: WanComponents,
        device: torch.device,
        model_id: str,
        scheduler_overrides: dict[str, Any] | None = None,
        embedding_cache_size: int = EMBEDDING_CACHE_SIZE,
        text_encoder_device: torch.device | None = None,
        calibration: StepCacheCalibration | None = None,
    ) -> None:
        self.components = components
        self.model_id = model_id
        self.embedding_cache: LRUCache[EmbeddingKey, EmbeddingPair] = LRUCache(embedding_cache_size)
        vae_config = components.vae.config
        scheduler_config = {**components.scheduler_config, **(scheduler_overrides or {})}
        super().__init__(
            [
                TextEncodingStage(
                    device,
                    components.tokenizer,
                    components.text_encoder,
                    model_id=model_id,
                    output_dtype=components.transformer.proj_out.weight.dtype,
                    cache=self.embedding_cache,
                    encoder_device=text_encoder_device,
                ),
                LatentPreparationStage(
                    device,
                    channels=components.transformer.config.in_channels,
                    temporal_factor=vae_config.scale_factor_temporal,
                    spatial_factor=vae_config.scale_factor_spatial,
                ),
                DenoisingStage(device, components.transformer, scheduler_config, calibration),
                DecodingStage(device, components.vae),
                EncodingStage(device),
            ]
        )

    @torch.inference_mode()
    def __call__(
        self,
        request: GenerationRequest,
        on_step: OnStep | None = None,
        on_stage: OnStage | None = None,
        output_path: Path | None = None,
        memory_plan: MemoryPlan | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> GenerationResult:
        state = self.run(
            PipelineState(
                request=request,
                on_step=on_step,
                on_stage=on_stage,
                output_path=output_path,
                memory_plan=memory_plan,
                checkpointer=checkpointer,
                checkpoint_fingerprint=request_fingerprint(self.model_id, request) if checkpointer else "",
            )
        )
        peaks = state.stage_peak_memory_bytes
        return GenerationResult(
            frames=state.frames,
            stage_timings_s=state.stage_timings_s,
            peak_memory_bytes=max(peaks.values()) if peaks else None,
            seed=request.seed,
            latents=state.latents,
            video_path=state.video_path,
            thumbnail_path=state.thumbnail_path,
            stage_peak_memory_bytes=peaks,
            memory_plan=memory_plan,
            resumed_from_step=state.resumed_from_step,
            acceleration=state.acceleration,
        )
