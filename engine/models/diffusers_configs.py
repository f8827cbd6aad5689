"""The published component configs of the diffusers-backed registry checkpoints.

Only what decides sizes: the transformer, VAE and text encoder configs of each checkpoint as
published on the Hub (diffusers 0.42 class defaults where the checkpoint uses them). The benchmark
builds random-weight models from them at each family's default shape, and a test holds the
planner's `DIFFUSERS_FOOTPRINTS` (torch-free constants the API plans with) to the parameter counts
of these configs instantiated on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# google/t5-v1_1-xxl's encoder: the text encoder of LTX-Video, CogVideoX and Mochi.
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}

# HunyuanVideo: the text half of llava-llama-3-8b (LlamaModel) and CLIP ViT-L/14's text tower.
LLAMA3_8B = {
    "vocab_size": 128320,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}
CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
}


@dataclass(frozen=True)
class PublishedCheckpoint:
    """Class names and configs of one checkpoint's components (text encoders as transformers classes)."""

    transformer_class: str
    transformer: dict[str, Any]
    vae_class: str
    vae: dict[str, Any] = field(default_factory=dict)
    text_encoders: tuple[tuple[str, dict[str, Any]], ...] = (("T5EncoderModel", T5_XXL),)


_COGVIDEOX_VAE = ("AutoencoderKLCogVideoX", {})

PUBLISHED: dict[str, PublishedCheckpoint] = {
    "ltx-video": PublishedCheckpoint(
        "LTXVideoTransformer3DModel",
        {
            "in_channels": 128,
            "out_channels": 128,
            "patch_size": 1,
            "patch_size_t": 1,
            "num_attention_heads": 32,
            "attention_head_dim": 64,
            "cross_attention_dim": 2048,
            "num_layers": 28,
            "caption_channels": 4096,
        },
        "AutoencoderKLLTXVideo",
    ),
    "cogvideox-2b": PublishedCheckpoint(
        "CogVideoXTransformer3DModel",
        {"num_attention_heads": 30, "attention_head_dim": 64, "num_layers": 30},
        *_COGVIDEOX_VAE,
    ),
    "cogvideox-5b": PublishedCheckpoint(
        "CogVideoXTransformer3DModel",
        {
            "num_attention_heads": 48,
            "attention_head_dim": 64,
            "num_layers": 42,
            "use_rotary_positional_embeddings": True,
        },
        *_COGVIDEOX_VAE,
    ),
    "cogvideox-5b-i2v": PublishedCheckpoint(
        "CogVideoXTransformer3DModel",
        {
            "num_attention_heads": 48,
            "attention_head_dim": 64,
            "num_layers": 42,
            "in_channels": 32,
            "use_rotary_positional_embeddings": True,
            "use_learned_positional_embeddings": True,
        },
        *_COGVIDEOX_VAE,
    ),
    "mochi-1": PublishedCheckpoint("MochiTransformer3DModel", {}, "AutoencoderKLMochi"),
    "hunyuanvideo": PublishedCheckpoint(
        "HunyuanVideoTransformer3DModel",
        {},
        "AutoencoderKLHunyuanVideo",
        text_encoders=(("LlamaModel", LLAMA3_8B), ("CLIPTextModel", CLIP_L_TEXT)),
    ),
}


def build(name: str, component: str, index: int = 0) -> Any:
    """Instantiate one component of a published checkpoint (random weights, on the current default
    device: use `torch.device("meta")` to count parameters without memory)."""
    import diffusers
    import transformers

    checkpoint = PUBLISHED[name]
    if component == "transformer":
        return getattr(diffusers, checkpoint.transformer_class)(**checkpoint.transformer)
    if component == "vae":
        return getattr(diffusers, checkpoint.vae_class)(**checkpoint.vae)
    class_name, config = checkpoint.text_encoders[index]
    config_class = getattr(transformers, class_name.replace("EncoderModel", "Config").replace("Model", "Config"))
    return getattr(transformers, class_name)(config_class(**config))
