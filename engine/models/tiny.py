"""Tiny random-weight Wan checkpoints, small enough to build and run on a CPU in seconds.

Each has the real architecture of every component in the diffusers folder layout, so every code
path the real models take is exercised by tests and CI. The weights are random but
deterministic: the same bytes (up to file metadata) on every machine.

- `tiny-wan`: Wan2.1 text-to-video (DiT, Wan VAE, UMT5 encoder, a trained tokenizer, UniPC).
- `tiny-wan-i2v`: Wan2.1 image-to-video: a 36-channel DiT with image cross-attention, a CLIP
  vision encoder (`image_encoder/`) and its image processor (`image_processor/`).
- `tiny-wan2.2-ti2v`: Wan2.2 TI2V: the Wan2.2 VAE (48 channels, 16x16 spatial via a 2x2
  patchify, residual shortcuts) and a 48-channel DiT; `expand_timesteps` in model_index.json.
- `tiny-wan2.2-t2v-a14b` / `tiny-wan2.2-i2v-a14b`: two experts (`transformer/`,
  `transformer_2/`) switched at `boundary_ratio`; the I2V one has 36 channels and no CLIP.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig

SEED = 20240229
TEXT_DIM = 32

TINY_TRANSFORMER = WanTransformerConfig(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=16,
    in_channels=16,
    out_channels=16,
    text_dim=TEXT_DIM,
    freq_dim=32,
    ffn_dim=64,
    num_layers=2,
    cross_attn_norm=True,
    rope_max_seq_len=1024,
)

TINY_VAE = {
    "base_dim": 8,
    "z_dim": 16,  # the DiT's channel count; latents_mean/std keep their 16 real values
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

TINY_TEXT_ENCODER = {
    "d_model": TEXT_DIM,
    "d_kv": 8,
    "d_ff": 64,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "dropout_rate": 0.0,
}

# Wan2.2's VAE (AutoencoderKLWan with the Wan2.2 configuration), shrunk; 48 latent channels and
# the published per-channel latent statistics (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json).
TINY_VAE22 = {
    "base_dim": 8,
    "decoder_base_dim": 16,
    "z_dim": 48,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [
        -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
        0.157, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
        -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.123, -0.0313, -0.1649, 0.0117, 0.0723,
        -0.2839, -0.2083, -0.052, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
    ],
    "latents_std": [
        0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.499, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
        0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
        0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
        0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.06, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
    ],
}  # fmt: skip

# A CLIP ViT of a few layers; Wan reads its penultimate hidden states (257 tokens for ViT-H/14 at
# 224px, here 1 + (32/8)^2 = 17).
CLIP_DIM = 24
TINY_CLIP = {
    "hidden_size": CLIP_DIM,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": CLIP_DIM,
}
TINY_CLIP_PROCESSOR = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}

TINY_I2V_TRANSFORMER = replace(
    TINY_TRANSFORMER, in_channels=36, image_dim=CLIP_DIM, added_kv_proj_dim=TINY_TRANSFORMER.inner_dim
)
TINY_TI2V_TRANSFORMER = replace(TINY_TRANSFORMER, in_channels=48, out_channels=48)
TINY_A14B_I2V_TRANSFORMER = replace(TINY_TRANSFORMER, in_channels=36)

SCHEDULER = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "num_train_timesteps": 1000,
    "flow_shift": 3.0,
}

MAX_TEXT_TOKENS = 512
TOKENIZER_VOCAB = 400
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"  # ids 0, 1, 2 as in T5


def _corpus() -> list[str]:
    """A few hundred English sentences in the register of video prompts, built deterministically."""
    subjects = [
        "a cat",
        "a dog",
        "an old man",
        "a young woman",
        "two children",
        "a red car",
        "a small boat",
        "a horse",
        "a robot",
        "a bird",
        "the astronaut",
        "a dancer",
    ]
    actions = ["walks", "runs", "jumps", "sleeps", "dances", "flies", "drives", "swims", "sings", "waits"]
    places = [
        "on the beach",
        "in a forest",
        "through the city",
        "under the rain",
        "at sunset",
        "in the snow",
        "across a bridge",
        "near the river",
        "in space",
        "on a busy street",
    ]
    styles = [
        "cinematic lighting",
        "slow motion",
        "high detail",
        "soft focus",
        "wide angle shot",
        "close up",
        "golden hour",
        "static camera",
        "handheld camera",
        "vivid colors",
    ]
    sentences = [
        f"{s} {a} {p}, {st}."
        for s, a, p, st in itertools.islice(itertools.product(subjects, actions, places, styles), 0, None, 37)
    ]
    sentences += ["low quality, blurry, static, worst quality, jpeg artifacts, ugly, deformed, extra fingers"]
    return sentences


def write_tokenizer(folder: Path, max_tokens: int = MAX_TEXT_TOKENS) -> None:
    """Train a small Unigram tokenizer (T5-style Metaspace, EOS appended) and save it for AutoTokenizer.

    Also the tokenizer of the other families' tiny checkpoints (`engine.models.tiny_diffusers`).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=TOKENIZER_VOCAB, special_tokens=[PAD, EOS, UNK], unk_token=UNK, show_progress=False
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, tokenizer.token_to_id(EOS))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=max_tokens,
    )
    fast.save_pretrained(folder)


def _smooth_images(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[count, 3, height, width] in [-1, 1]: random colours on a 4x6 grid, bicubically smoothed."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 6, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic").clamp(-1, 1)


def _fit_last_conv(conv: torch.nn.Module, features: torch.Tensor, target: torch.Tensor, ridge: float = 1e-3) -> None:
    """Set a causal 3x3x3 conv's current-frame taps (and bias) to the ridge least-squares map from
    `features` [N, C, h, w] to `target` [N, K, h, w] (K <= its outputs; the rest output zero)."""
    channels, outputs = features.shape[1], target.shape[1]
    inputs = torch.nn.functional.unfold(features, 3, padding=1).transpose(1, 2).reshape(-1, channels * 9)
    inputs = torch.cat([inputs, torch.ones(len(inputs), 1)], dim=1)  # [N*h*w, 9C + 1]
    wanted = target.flatten(2).transpose(1, 2).reshape(-1, outputs)  # [N*h*w, K]
    gram = inputs.T @ inputs + ridge * torch.eye(inputs.shape[1])
    solution = torch.linalg.solve(gram, inputs.T @ wanted)  # [9C + 1, K]
    conv.weight.zero_()
    conv.weight[:outputs, :, -1] = solution[:-1].T.reshape(outputs, channels, 3, 3)
    conv.bias.zero_()
    conv.bias[:outputs] = solution[-1]


@torch.no_grad()
def make_vae_reconstruct(vae: torch.nn.Module) -> None:
    """Turn a random Wan2.2 VAE into a rough image codec, so that a tiny image-to-video render's
    first frame visibly follows its input (what the service's end-to-end test checks).

    Random weights map an image to latents and back to something unrelated. Here every residual
    branch, the resampling convolutions and the attention outputs are zeroed, which leaves the
    Wan2.2 VAE's parameter-free shortcuts (averaging on the way down, duplication on the way up)
    carrying the image; then the encoder's last convolution is fitted (least squares, on smooth
    random images) to output the image at 1/4 resolution, 4x4-unshuffled into the 48 latent
    channels, and the decoder's last convolution to output the image. Deterministic; the
    architecture and parameter names are unchanged, so diffusers loads it as any Wan2.2 VAE.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

    zeroed = ("conv2.", "proj.", "resample.1.", "time_conv.")
    for name, param in vae.named_parameters():
        if any(part in name for part in zeroed) and "quant" not in name:
            param.zero_()
    for conv in (vae.quant_conv, vae.post_quant_conv):  # 1x1 convs -> identity
        conv.weight.zero_()
        conv.bias.zero_()
        diagonal = torch.arange(min(conv.weight.shape[:2]))
        conv.weight[diagonal, diagonal, -1, 0, 0] = 1.0

    def inputs_of(conv: torch.nn.Module, run) -> torch.Tensor:  # type: ignore[no-untyped-def]
        seen: list[torch.Tensor] = []
        handle = conv.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, :, -1]))
        run()
        handle.remove()
        return torch.cat(seen)  # [N, C, h, w]: the current frame's features

    images = _smooth_images(16, 64, 64, seed=SEED)  # [N, 3, 64, 64]
    video = images.unsqueeze(2)  # [N, 3, 1, 64, 64]
    quarter = torch.nn.functional.pixel_unshuffle(torch.nn.functional.avg_pool2d(images, 4), 4)  # [N, 48, 4, 4]
    _fit_last_conv(vae.encoder.conv_out, inputs_of(vae.encoder.conv_out, lambda: vae.encode(video)), quarter)
    latents = vae.encode(video).latent_dist.mode()
    features = inputs_of(vae.decoder.conv_out, lambda: vae.decode(latents))
    _fit_last_conv(vae.decoder.conv_out, features, patchify(video, 2)[:, :, 0])


@dataclass(frozen=True)
class TinyVariant:
    """What one tiny checkpoint holds beyond tiny-wan's text encoder, tokenizer and scheduler."""

    transformer: WanTransformerConfig
    vae: dict
    pipeline_class: str = "WanPipeline"
    clip: bool = False  # image_encoder/ + image_processor/ (Wan2.1 I2V)
    boundary_ratio: float | None = None  # two experts: transformer_2/ too
    expand_timesteps: bool = False
    reconstructing_vae: bool = False  # `make_vae_reconstruct` (the service's image-to-video test)


TINY_VARIANTS: dict[str, TinyVariant] = {
    "tiny-wan": TinyVariant(TINY_TRANSFORMER, TINY_VAE),
    "tiny-wan-i2v": TinyVariant(TINY_I2V_TRANSFORMER, TINY_VAE, "WanImageToVideoPipeline", clip=True),
    "tiny-wan2.2-ti2v": TinyVariant(TINY_TI2V_TRANSFORMER, TINY_VAE22, expand_timesteps=True, reconstructing_vae=True),
    "tiny-wan2.2-t2v-a14b": TinyVariant(TINY_TRANSFORMER, TINY_VAE, boundary_ratio=0.875),
    "tiny-wan2.2-i2v-a14b": TinyVariant(
        TINY_A14B_I2V_TRANSFORMER, TINY_VAE, "WanImageToVideoPipeline", boundary_ratio=0.9
    ),
}


def _write_components(root: Path, variant: TinyVariant) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from diffusers import __version__ as diffusers_version
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from engine.libraries import libraries_follow_the_process

    libraries_follow_the_process()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        WanTransformer3DModel(variant.transformer).save_pretrained(root / "transformer")
        vae = AutoencoderKLWan(**variant.vae)
        if variant.reconstructing_vae:
            make_vae_reconstruct(vae)
        vae.save_pretrained(root / "vae")
        write_tokenizer(root / "tokenizer")
        vocab_size = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TINY_TEXT_ENCODER))
        text_encoder.save_pretrained(root / "text_encoder")
        if variant.boundary_ratio is not None:
            WanTransformer3DModel(variant.transformer).save_pretrained(root / "transformer_2")
        if variant.clip:
            from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

            CLIPVisionModel(CLIPVisionConfig(**TINY_CLIP)).save_pretrained(root / "image_encoder")
            CLIPImageProcessor(**TINY_CLIP_PROCESSOR).save_pretrained(root / "image_processor")
    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(root / "scheduler")

    model_index: dict[str, object] = {
        "_class_name": variant.pipeline_class,
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if variant.boundary_ratio is not None or variant.expand_timesteps or variant.pipeline_class != "WanPipeline":
        two = variant.boundary_ratio is not None
        model_index["transformer_2"] = ["diffusers", "WanTransformer3DModel"] if two else [None, None]
        model_index["boundary_ratio"] = variant.boundary_ratio
        model_index["expand_timesteps"] = variant.expand_timesteps
    if variant.pipeline_class == "WanImageToVideoPipeline":
        clip = variant.clip
        model_index["image_encoder"] = ["transformers", "CLIPVisionModel"] if clip else [None, None]
        model_index["image_processor"] = ["transformers", "CLIPImageProcessor"] if clip else [None, None]
    # Written last: its presence marks a complete checkpoint.
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))


def write_tiny_wan(path: str | Path, name: str = "tiny-wan") -> Path:
    """Write the tiny checkpoint `name` (a key of `TINY_VARIANTS`) to `path` (a diffusers-format
    folder) unless it is already there.

    Built in a temporary sibling folder and renamed into place, so concurrent writers (two test
    workers, two engine processes) never expose a half-written folder: the first rename wins and
    the others discard their copy.
    """
    path = Path(path)
    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        _write_components(staging, TINY_VARIANTS[name])
        try:
            os.rename(staging, path)
        except OSError:
            # Lost the race (or an empty leftover folder is in the way); the winner's copy is complete.
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
