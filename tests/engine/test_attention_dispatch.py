"""Backend resolution and the dispatch's agreement with a hand-written attention."""

from __future__ import annotations

import pytest
import torch

from engine.attention import attention, resolve_backend


def test_auto_resolves_to_sdpa_on_cpu() -> None:
    assert resolve_backend("auto", "cpu") == "sdpa"


@pytest.mark.parametrize("backend", ["cudnn", "flash", "flash_attn", "sage"])
def test_gpu_backends_are_rejected_on_cpu(backend: str) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend(backend, "cpu")


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("xformers", "cpu")


def test_sdpa_matches_reference_attention() -> None:
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 7, 3, 8, generator=generator)  # [B, Sq, H, D]
    key = torch.randn(2, 5, 3, 8, generator=generator)  # [B, Skv, H, D]
    value = torch.randn(2, 5, 3, 8, generator=generator)
    scores = torch.einsum("bqhd,bkhd->bhqk", query, key) / 8**0.5
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), value)
    torch.testing.assert_close(attention(query, key, value, "sdpa"), expected, rtol=1e-5, atol=1e-6)
