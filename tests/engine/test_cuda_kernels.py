"""The CUDA-only fast paths against the plain PyTorch path, in bf16 on random inputs.

Skipped where there is no GPU (CI); run on a GPU machine with
`pytest --noconftest tests/engine/test_cuda_kernels.py`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.models.ops import linear_gelu_tanh
from engine.models.tiny import TINY_TRANSFORMER
from engine.models.wan_transformer import WanTransformer3DModel
from engine.optimize import optimize_transformer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@cuda
@pytest.mark.parametrize("shape", [(7, 64), (3, 1000, 1536)])
def test_gelu_epilogue_matches_linear_then_gelu(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(*shape, device="cuda", dtype=torch.bfloat16)
    linear = torch.nn.Linear(shape[-1], 4 * shape[-1], device="cuda", dtype=torch.bfloat16)
    expected = torch.nn.functional.gelu(linear(x).float(), approximate="tanh")  # float32 GELU of the bf16 GEMM
    actual = linear_gelu_tanh(x, linear.weight, linear.bias)
    assert actual.shape == (*shape[:-1], 4 * shape[-1]) and actual.dtype == torch.bfloat16
    assert relative_error(actual, expected) < 8e-3  # bf16 output rounding is ~4e-3


def test_gelu_epilogue_refuses_the_cpu() -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        linear_gelu_tanh(torch.randn(2, 4), torch.randn(8, 4), torch.randn(8))


@cuda
@torch.inference_mode()
def test_optimized_transformer_matches_the_plain_path_in_bf16() -> None:
    torch.manual_seed(0)
    plain = WanTransformer3DModel(TINY_TRANSFORMER).to("cuda").cast(torch.bfloat16).eval()
    fast = optimize_transformer(copy.deepcopy(plain), fuse=True, compile=True)
    assert fast.blocks[0].ffn.net[0].fused_epilogue
    generator = torch.Generator("cuda").manual_seed(1)
    latents = torch.randn(2, 16, 3, 8, 12, device="cuda", generator=generator).to(torch.bfloat16)
    text = torch.randn(2, 24, TINY_TRANSFORMER.text_dim, device="cuda", generator=generator).to(torch.bfloat16)
    timestep = torch.tensor([700.0, 700.0], device="cuda")
    assert relative_error(fast(latents, timestep, text), plain(latents, timestep, text)) < 2e-2


@cuda
@pytest.mark.parametrize("backend", ["cudnn", "flash"])
def test_gpu_attention_backends_match_plain_sdpa(backend: str) -> None:
    from engine.attention import attention

    generator = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 300, 4, 64, device="cuda", generator=generator).to(torch.bfloat16) for _ in range(3))
    expected = attention(q.float(), k.float(), v.float(), "sdpa")
    assert relative_error(attention(q, k, v, backend), expected) < 1e-2
