"""Prompt -> UMT5 embeddings, exactly as diffusers' WanPipeline computes them, with an LRU cache."""

from __future__ import annotations

import html
import re
from typing import Any, ClassVar

import torch

from engine.cache import LRUCache
from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName

MAX_SEQUENCE_LENGTH = 512

try:  # WanPipeline repairs mojibake with ftfy when it is installed; do the same so prompts match.
    import ftfy
except ImportError:  # pragma: no cover - depends on the environment
    ftfy = None

EmbeddingKey = tuple[str, str, str | None]
EmbeddingPair = tuple[torch.Tensor, torch.Tensor | None]


def clean_prompt(text: str) -> str:
    """WanPipeline's `prompt_clean`: fix encoding, unescape HTML twice, collapse whitespace."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncodingStage(Stage):
    """Encodes the prompt (and, with CFG, the negative prompt) in one text-encoder batch.

    Embeddings past each prompt's real length are zeroed and padded to 512 tokens, as in
    `WanPipeline._get_t5_prompt_embeds`, so both embeddings have the same shape and can be
    stacked into one CFG batch. Results are cached by (model id, prompt, negative prompt);
    the negative is None in the key when CFG is off, since it is not encoded then.

    `encoder_device` is where the text encoder runs (default: the stage's device); the embeddings
    are moved to the stage's device either way.
    """

    name: ClassVar[str] = StageName.TEXT_ENCODING
    provides: ClassVar[tuple[str, ...]] = ("prompt_embeds",)

    def __init__(
        self,
        device: torch.device,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        model_id: str,
        output_dtype: torch.dtype,
        cache: LRUCache[EmbeddingKey, EmbeddingPair],
        encoder_device: torch.device | None = None,
    ) -> None:
        super().__init__(device)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.model_id = model_id
        self.output_dtype = output_dtype
        self.cache = cache
        self.encoder_device = encoder_device or device

    def forward(self, state: PipelineState) -> None:
        request = state.request
        negative = request.negative_prompt if request.do_cfg else None
        key: EmbeddingKey = (self.model_id, request.prompt, negative)
        cached = self.cache.get(key)
        if cached is None:
            texts = [request.prompt] if negative is None else [request.prompt, negative]
            embeds = self.encode(texts)  # [1 or 2, 512, text_dim]
            cached = (embeds[:1], embeds[1:] if negative is not None else None)
            self.cache.put(key, cached)
        state.prompt_embeds, state.negative_prompt_embeds = cached

    def encode(self, texts: list[str]) -> torch.Tensor:
        """texts -> [len(texts), 512, text_dim] in `output_dtype`, zero past each text's tokens."""
        tokens = self.tokenizer(
            [clean_prompt(text) for text in texts],
            padding="max_length",
            max_length=MAX_SEQUENCE_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        input_ids = tokens.input_ids.to(self.encoder_device)  # [N, 512]
        mask = tokens.attention_mask.to(self.encoder_device)  # [N, 512]
        hidden = self.text_encoder(input_ids, mask).last_hidden_state  # [N, 512, text_dim]
        hidden = hidden.to(self.device, self.output_dtype)
        mask = mask.to(self.device)
        # Zero the positions past each text's length (WanPipeline slices then pads with zeros).
        valid = mask.gt(0).unsqueeze(-1)  # [N, 512, 1]
        return torch.where(valid, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
