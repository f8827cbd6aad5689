"""Wan text- and image-to-video: text (and image) encoding -> noise (and first-frame condition)
-> denoising -> VAE decoding -> mp4.

One pipeline for every Wan checkpoint: the stages it holds follow from the loaded components
(an image encoder adds CLIP image encoding; an image-conditioned DiT adds the first-frame
condition; a second expert goes to the denoising stage), as diffusers' WanPipeline and
WanImageToVideoPipeline do with the same components.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.acceleration.calibration import StepCacheCalibration
from engine.cache import LRUCache
from engine.checkpoint import Checkpointer, request_fingerprint
from engine.models.components import WanComponents
from engine.pipelines.base import Pipeline, result_of
from engine.stages.decoding import DecodingStage
from engine.stages.denoising import DenoisingStage
from engine.stages.encoding import EncodingStage
from engine.stages.image_conditioning import ImageConditioningStage
from engine.stages.image_encoding import ImageEncodingStage, ImageKey
from engine.stages.latent_preparation import LatentPreparationStage
from engine.stages.state import OnStage, OnStep, PipelineState
from engine.stages.text_encoding import EmbeddingKey, EmbeddingPair, TextEncodingStage
from spec.memory import MemoryPlan
from spec.request import GenerationRequest, GenerationResult

EMBEDDING_CACHE_SIZE = 32


class WanT2VPipeline(Pipeline):
    """The stages of WanPipeline / WanImageToVideoPipeline, rebuilt around our DiT and a
    batched-CFG denoising loop.

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
        self.image_cache: LRUCache[ImageKey, torch.Tensor] = LRUCache(embedding_cache_size)
        vae_config = components.vae.config
        scheduler_config = {**components.scheduler_config, **(scheduler_overrides or {})}
        dit_dtype = components.transformer.proj_out.weight.dtype
        stages = [
            TextEncodingStage(
                device,
                components.tokenizer,
                components.text_encoder,
                model_id=model_id,
                output_dtype=dit_dtype,
                cache=self.embedding_cache,
                encoder_device=text_encoder_device,
            )
        ]
        if components.image_encoder is not None:
            stages.append(
                ImageEncodingStage(
                    device,
                    components.image_processor,
                    components.image_encoder,
                    model_id=model_id,
                    output_dtype=dit_dtype,
                    cache=self.image_cache,
                )
            )
        stages.append(
            LatentPreparationStage(
                device,
                channels=components.transformer.config.out_channels,  # the VAE's z_dim
                temporal_factor=vae_config.scale_factor_temporal,
                spatial_factor=vae_config.scale_factor_spatial,
            )
        )
        if components.image_conditioned:
            stages.append(ImageConditioningStage(device, components.vae, components.expand_timesteps))
        stages += [
            DenoisingStage(
                device,
                components.transformer,
                scheduler_config,
                calibration,
                transformer_2=components.transformer_2,
                boundary_ratio=components.boundary_ratio,
                expand_timesteps=components.expand_timesteps,
            ),
            DecodingStage(device, components.vae),
            EncodingStage(device),
        ]
        super().__init__(stages)

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
        return result_of(state)
