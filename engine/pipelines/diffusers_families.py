"""What differs between the families the diffusers backend serves, as data plus three small functions.

The backend runs each family's own diffusers pipeline, split in three stages: the pipeline's
`encode_prompt` (text encoding), the pipeline itself on those embeddings with
`output_type="latent"` (denoising, every step through `callback_on_step_end`), and the last lines
of the pipeline's `__call__` (decoding). A `DiffusersFamily` holds the family-specific parts:
which embeddings `encode_prompt` returns and under which `__call__` argument names, the extra
`__call__` arguments a request maps to, and the decode. Each `decode_*` below is a copy of the
pipeline's own tail (cited), so that the frames equal the plain pipeline's for the same seed; the
tests hold them to that on every family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from spec.request import GenerationRequest

Pipe = Any  # a diffusers DiffusionPipeline of the family (typed loosely: diffusers is imported lazily)
Encode = Callable[[Pipe, GenerationRequest, torch.device], dict[str, torch.Tensor | None]]
Decode = Callable[[Pipe, torch.Tensor, GenerationRequest, torch.Generator], torch.Tensor]

# LTX-Video 0.9.1+ decodes at a small noise level (its VAE is timestep-conditioned); these are the
# values of the model card's examples. Checkpoints without timestep conditioning ignore them.
LTX_DECODE_TIMESTEP = 0.03
LTX_DECODE_NOISE_SCALE = 0.025


@dataclass(frozen=True)
class DiffusersFamily:
    """One family served through diffusers.

    `text_to_video` / `image_to_video`: the pipeline class names used without / with an input image
    (None: the family has no such mode). `image_to_video_shares_weights`: both run on one checkpoint
    (LTX); otherwise a checkpoint serves only the mode its model_index.json names (CogVideoX 5B vs
    5B-I2V). `checkpoint_classes`: the `_class_name` values
    of model_index.json that belong to the family. `repeated_blocks`: class names of the
    transformer's repeated blocks, compiled one by one (regional compilation) when the model does not list
    its own (`_repeated_blocks`, which CogVideoX and Mochi lack). `attention_dispatch`:
    whether the transformer's attention goes through diffusers' dispatcher (so a kernel package,
    flash-attn or SageAttention, can be selected); the others call SDPA directly, whose kernel
    choice (cuDNN, flash) vidq sets around the denoising loop. `uses_negative_prompt`: False for
    guidance-distilled models, whose `guidance_scale` is an input of the transformer, not CFG.
    `fuse_projections`: run q/k/v as one GEMM through the model's `fuse_qkv_projections` (measured
    on CogVideoX; the other families keep their projections as diffusers ships them).
    """

    name: str
    checkpoint_classes: tuple[str, ...]
    text_to_video: str | None
    image_to_video: str | None
    image_to_video_shares_weights: bool
    repeated_blocks: tuple[str, ...]
    attention_dispatch: bool
    encode: Encode
    decode: Decode
    call_kwargs: Callable[[GenerationRequest], dict[str, Any]] = lambda request: {}
    uses_negative_prompt: bool = True
    fuse_projections: bool = False

    def pipeline_classes(self, checkpoint_class: str) -> tuple[str, ...]:
        """The pipeline classes a checkpoint whose model_index.json names `checkpoint_class` runs."""
        if self.image_to_video_shares_weights:
            return tuple(name for name in (self.text_to_video, self.image_to_video) if name is not None)
        return (checkpoint_class,)

    def pipeline_class(self, with_image: bool) -> str:
        name = self.image_to_video if with_image else self.text_to_video
        if name is None:
            raise ValueError(f"{self.name} has no {'image' if with_image else 'text'}-to-video pipeline")
        return name


def _negative(request: GenerationRequest) -> str:
    return request.negative_prompt or ""


# --- text encoding: each returns the __call__ keyword arguments that carry the embeddings -------------------


def encode_with_masks(pipe: Pipe, request: GenerationRequest, device: torch.device) -> dict[str, torch.Tensor | None]:
    """LTX-Video and Mochi: T5 embeddings with their attention masks (negatives only under CFG)."""
    embeds, mask, negative_embeds, negative_mask = pipe.encode_prompt(
        prompt=request.prompt,
        negative_prompt=_negative(request),
        do_classifier_free_guidance=request.do_cfg,
        device=device,
    )
    return {
        "prompt_embeds": embeds,
        "prompt_attention_mask": mask,
        "negative_prompt_embeds": negative_embeds,
        "negative_prompt_attention_mask": negative_mask,
    }


def encode_cogvideox(pipe: Pipe, request: GenerationRequest, device: torch.device) -> dict[str, torch.Tensor | None]:
    """CogVideoX: T5 embeddings padded to 226 tokens, no masks."""
    embeds, negative_embeds = pipe.encode_prompt(
        prompt=request.prompt,
        negative_prompt=_negative(request),
        do_classifier_free_guidance=request.do_cfg,
        device=device,
    )
    return {"prompt_embeds": embeds, "negative_prompt_embeds": negative_embeds}


def encode_hunyuanvideo(pipe: Pipe, request: GenerationRequest, device: torch.device) -> dict[str, torch.Tensor | None]:
    """HunyuanVideo: Llama hidden states (prompt template applied) plus CLIP's pooled embedding."""
    embeds, pooled, mask = pipe.encode_prompt(prompt=request.prompt, prompt_2=None, device=device)
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "prompt_attention_mask": mask}


# --- decoding: latents as the pipeline returns them with output_type="latent" -> video [B, 3, F, H, W] in [-1, 1]


def _latent_grid(pipe: Pipe, request: GenerationRequest) -> tuple[int, int, int]:
    """(latent frames, latent height, latent width) of the request under the pipeline's VAE."""
    frames = (request.num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
    return (
        frames,
        request.height // pipe.vae_spatial_compression_ratio,
        request.width // pipe.vae_spatial_compression_ratio,
    )


def decode_ltx(
    pipe: Pipe, latents: torch.Tensor, request: GenerationRequest, generator: torch.Generator
) -> torch.Tensor:
    """`LTXPipeline.__call__` / `LTXImageToVideoPipeline.__call__` after the loop (diffusers 0.42)."""
    from diffusers.utils.torch_utils import randn_tensor

    frames, height, width = _latent_grid(pipe, request)
    latents = pipe._unpack_latents(  # [B, S, C] -> [B, C, F', H', W']
        latents, frames, height, width, pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size
    )
    latents = pipe._denormalize_latents(
        latents, pipe.vae.latents_mean, pipe.vae.latents_std, pipe.vae.config.scaling_factor
    )
    latents = latents.to(pipe.text_encoder.dtype)  # the pipeline casts to prompt_embeds' dtype
    timestep = None
    if pipe.vae.config.timestep_conditioning:
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timestep = torch.tensor([LTX_DECODE_TIMESTEP], device=latents.device, dtype=latents.dtype)
        scale = torch.tensor([LTX_DECODE_NOISE_SCALE], device=latents.device, dtype=latents.dtype)[
            :, None, None, None, None
        ]
        latents = (1 - scale) * latents + scale * noise
    return pipe.vae.decode(latents.to(pipe.vae.dtype), timestep, return_dict=False)[0]


def decode_cogvideox(
    pipe: Pipe, latents: torch.Tensor, request: GenerationRequest, generator: torch.Generator
) -> torch.Tensor:
    """`CogVideoXPipeline.__call__` after the loop: drop CogVideoX 1.5's padding frames, then decode."""
    latent_frames = (request.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
    patch_t = pipe.transformer.config.patch_size_t
    padding = patch_t - latent_frames % patch_t if patch_t is not None and latent_frames % patch_t else 0
    return pipe.decode_latents(latents[:, padding:])  # latents [B, F', C, H', W']


def decode_mochi(
    pipe: Pipe, latents: torch.Tensor, request: GenerationRequest, generator: torch.Generator
) -> torch.Tensor:
    """`MochiPipeline.__call__` after the loop: per-channel de-normalisation, then decode."""
    config = pipe.vae.config
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        channels = len(config.latents_mean)
        mean = torch.tensor(config.latents_mean).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(config.latents_std).view(1, channels, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std / config.scaling_factor + mean
    else:
        latents = latents / config.scaling_factor
    return pipe.vae.decode(latents, return_dict=False)[0]


def decode_hunyuanvideo(
    pipe: Pipe, latents: torch.Tensor, request: GenerationRequest, generator: torch.Generator
) -> torch.Tensor:
    """`HunyuanVideoPipeline.__call__` after the loop."""
    latents = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
    return pipe.vae.decode(latents, return_dict=False)[0]


# --- the families ------------------------------------------------------------------------------------------

LTX = DiffusersFamily(
    name="ltx",
    checkpoint_classes=("LTXPipeline", "LTXImageToVideoPipeline"),
    text_to_video="LTXPipeline",
    image_to_video="LTXImageToVideoPipeline",  # the same checkpoint does both
    image_to_video_shares_weights=True,
    repeated_blocks=("LTXVideoTransformerBlock",),
    attention_dispatch=True,
    encode=encode_with_masks,
    decode=decode_ltx,
    # The frame rate sets the RoPE's time scale.
    call_kwargs=lambda request: {"frame_rate": request.fps},
)

COGVIDEOX = DiffusersFamily(
    name="cogvideox",
    checkpoint_classes=("CogVideoXPipeline", "CogVideoXImageToVideoPipeline"),
    text_to_video="CogVideoXPipeline",
    image_to_video="CogVideoXImageToVideoPipeline",  # a separate checkpoint (5B-I2V)
    image_to_video_shares_weights=False,
    repeated_blocks=("CogVideoXBlock",),
    attention_dispatch=False,
    encode=encode_cogvideox,
    decode=decode_cogvideox,
    fuse_projections=True,
)

MOCHI = DiffusersFamily(
    name="mochi",
    checkpoint_classes=("MochiPipeline",),
    text_to_video="MochiPipeline",
    image_to_video=None,
    image_to_video_shares_weights=False,
    repeated_blocks=("MochiTransformerBlock",),
    attention_dispatch=False,
    encode=encode_with_masks,
    decode=decode_mochi,
)

HUNYUANVIDEO = DiffusersFamily(
    name="hunyuanvideo",
    checkpoint_classes=("HunyuanVideoPipeline",),
    text_to_video="HunyuanVideoPipeline",
    image_to_video=None,
    image_to_video_shares_weights=False,
    repeated_blocks=("HunyuanVideoTransformerBlock", "HunyuanVideoSingleTransformerBlock"),
    attention_dispatch=True,
    encode=encode_hunyuanvideo,
    decode=decode_hunyuanvideo,
    uses_negative_prompt=False,
)

FAMILIES: dict[str, DiffusersFamily] = {family.name: family for family in (LTX, COGVIDEOX, MOCHI, HUNYUANVIDEO)}


def family_for_checkpoint(class_name: str) -> DiffusersFamily | None:
    """The family whose checkpoints carry `class_name` in model_index.json, or None (e.g. Wan)."""
    return next((f for f in FAMILIES.values() if class_name in f.checkpoint_classes), None)
