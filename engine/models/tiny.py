"""`tiny-wan`: a random-weight Wan2.1 checkpoint small enough to build and run on a CPU in seconds.

It has the real architecture of every component (DiT, Wan VAE, UMT5 encoder, a trained
tokenizer, UniPC scheduler) in the diffusers folder layout, so every code path the real models
take is exercised by tests and CI. The weights are random but deterministic: the same bytes
(up to file metadata) on every machine.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
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


def _write_components(root: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    from engine.libraries import libraries_follow_the_process

    libraries_follow_the_process()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        WanTransformer3DModel(TINY_TRANSFORMER).save_pretrained(root / "transformer")
        AutoencoderKLWan(**TINY_VAE).save_pretrained(root / "vae")
        write_tokenizer(root / "tokenizer")
        vocab_size = len(AutoTokenizer.from_pretrained(root / "tokenizer"))
        text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TINY_TEXT_ENCODER))
        text_encoder.save_pretrained(root / "text_encoder")
    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(root / "scheduler")

    from diffusers import __version__ as diffusers_version

    model_index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": diffusers_version,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    # Written last: its presence marks a complete checkpoint.
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))


def write_tiny_wan(path: str | Path) -> Path:
    """Write the tiny checkpoint to `path` (a diffusers-format folder) unless it is already there.

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
        _write_components(staging)
        try:
            os.rename(staging, path)
        except OSError:
            # Lost the race (or an empty leftover folder is in the way); the winner's copy is complete.
            if not (path / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
