"""Tiny random checkpoints of the families served through diffusers' own pipelines.

One per family, in diffusers' folder layout (model_index.json + one folder per component), with
the real component classes at a few hundred kB each, so CI runs every family's whole path (text
encoding, denoising, decoding, the backend's stages and the worker) on a CPU in seconds. They keep
what the backend depends on from the published checkpoints: the compression ratios of each VAE
(LTX 8x32x32, Mochi 6x8x8, CogVideoX and HunyuanVideo 4x8x8), timestep-conditioned LTX decoding,
CogVideoX's rotary embeddings and image channels, HunyuanVideo's two text encoders. Weights are
random but deterministic (seeded), like `tiny-wan`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.models.tiny import SEED, write_tokenizer

TEXT_DIM = 32
T5_TOKENS = {"ltx": 128, "cogvideox": 226, "mochi": 256}  # each pipeline's max_sequence_length

TINY_T5 = {
    "d_model": TEXT_DIM,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}


def _t5(root: Path, max_tokens: int) -> dict[str, list[str]]:
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    write_tokenizer(root / "tokenizer", max_tokens)
    vocab_size = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
    T5EncoderModel(T5Config(vocab_size=vocab_size, **TINY_T5)).save_pretrained(root / "text_encoder")
    return {
        "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    }


def _ltx(root: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=2,
        caption_channels=TEXT_DIM,
    ).save_pretrained(root / "transformer")
    # LTX-Video 0.9.1+'s VAE shape: 4x4 patches then three 2x down-samplings = 32x spatial, 8x temporal,
    # with timestep-conditioned decoding (so the decode draws noise from the request's generator).
    AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(True, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=True,
        patch_size=4,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    ).save_pretrained(root / "vae")
    FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_image_seq_len=1024, max_image_seq_len=4096, base_shift=0.95, max_shift=2.05
    ).save_pretrained(root / "scheduler")
    return {
        "_class_name": "LTXPipeline",
        "transformer": ["diffusers", "LTXVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLLTXVideo"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        **_t5(root, T5_TOKENS["ltx"]),
    }


def _cogvideox(root: Path, *, image_to_video: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler, CogVideoXTransformer3DModel

    latent_channels = 4
    # The 5B layout: rotary position embeddings; the I2V model also takes the image latents
    # concatenated on channels and learned position embeddings.
    CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,  # rotary: a quarter for time, 3/8 each for height and width, all even
        in_channels=latent_channels * (2 if image_to_video else 1),
        out_channels=latent_channels,
        time_embed_dim=8,
        text_embed_dim=TEXT_DIM,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=T5_TOKENS["cogvideox"],
        use_rotary_positional_embeddings=True,
        use_learned_positional_embeddings=image_to_video,
    ).save_pretrained(root / "transformer")
    AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    ).save_pretrained(root / "vae")
    CogVideoXDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        snr_shift_scale=1.0,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
    ).save_pretrained(root / "scheduler")
    return {
        "_class_name": "CogVideoXImageToVideoPipeline" if image_to_video else "CogVideoXPipeline",
        "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"],
        "scheduler": ["diffusers", "CogVideoXDPMScheduler"],
        **_t5(root, T5_TOKENS["cogvideox"]),
    }


def _mochi(root: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKLMochi, FlowMatchEulerDiscreteScheduler, MochiTransformer3DModel

    MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        pooled_projection_dim=16,
        in_channels=12,
        qk_norm="rms_norm",
        text_embed_dim=TEXT_DIM,
        time_embed_dim=4,
        activation_fn="swiglu",
        max_sequence_length=T5_TOKENS["mochi"],
    ).save_pretrained(root / "transformer")
    AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),  # its group norms have 32 groups
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
    ).save_pretrained(root / "vae")
    FlowMatchEulerDiscreteScheduler(invert_sigmas=True).save_pretrained(root / "scheduler")
    return {
        "_class_name": "MochiPipeline",
        "transformer": ["diffusers", "MochiTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLMochi"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        **_t5(root, T5_TOKENS["mochi"]),
    }


def _hunyuanvideo(root: Path) -> dict[str, Any]:
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=10,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=TEXT_DIM,
        pooled_projection_dim=16,
        rope_axes_dim=(2, 4, 4),
    ).save_pretrained(root / "transformer")
    AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).save_pretrained(root / "vae")
    FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(root / "scheduler")
    # The Llama prompt template is cropped by a fixed token count (95), so the tokenizer allows more.
    write_tokenizer(root / "tokenizer", 512)
    write_tokenizer(root / "tokenizer_2", 77)
    vocab_size = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
    # Three layers: the pipeline reads the hidden states two layers before the last.
    LlamaModel(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
        )
    ).save_pretrained(root / "text_encoder")
    CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=16,
            # The trained tokenizer's ids: "<pad>" 0, "</s>" 1 (appended to every prompt, where CLIP pools).
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=1,
        )
    ).save_pretrained(root / "text_encoder_2")
    return {
        "_class_name": "HunyuanVideoPipeline",
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "LlamaModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "text_encoder_2": ["transformers", "CLIPTextModel"],
        "tokenizer_2": ["transformers", "PreTrainedTokenizerFast"],
    }


# Registry name -> writer of its components (returns model_index.json's entries).
TINY_WRITERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tiny-ltx-video": _ltx,
    "tiny-cogvideox": lambda root: _cogvideox(root, image_to_video=False),
    "tiny-cogvideox-i2v": lambda root: _cogvideox(root, image_to_video=True),
    "tiny-mochi": _mochi,
    "tiny-hunyuanvideo": _hunyuanvideo,
}


def _write_components(name: str, root: Path) -> None:
    from diffusers import __version__ as diffusers_version

    from engine.libraries import libraries_follow_the_process

    libraries_follow_the_process()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        entries = TINY_WRITERS[name](root)
    model_index = {"_class_name": entries.pop("_class_name"), "_diffusers_version": diffusers_version, **entries}
    # Written last: its presence marks a complete checkpoint.
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))


def write_tiny_diffusers(name: str, path: str | Path) -> Path:
    """Write the tiny checkpoint `name` (a key of `TINY_WRITERS`) to `path` unless it is there.

    Built in a temporary sibling folder and renamed into place, as `write_tiny_wan` does, so
    concurrent writers never expose a half-written folder.
    """
    if name not in TINY_WRITERS:
        raise KeyError(f"no tiny checkpoint called {name!r}; known: {', '.join(TINY_WRITERS)}")
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        _write_components(name, staging)
        try:
            os.rename(staging, path)
        except OSError:
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
