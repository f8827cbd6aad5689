"""FP8 (e4m3) linear layers for the DiT blocks: weights quantized once per loaded model with one
scale per output channel, activations quantized per token at run time, `torch._scaled_mm`.

Where the work goes (H200, Wan2.1-14B block linear shapes, 65,520 tokens: `/work/shared/anchors`,
`fp8_gemm_probe.py`): the FP8 GEMMs with row-wise scales run 1.6-1.9x bf16, but quantizing the
activations eagerly (amax, divide, cast: three memory-bound passes) costs as much as the GEMM
saves. Inside a compiled block the quantization is traced with the norm/modulation that produces
the activation and fused into it, which is what makes FP8 pay (1.45x over a block's linears in
that probe); outside compiled blocks the quantizer is compiled on its own.

`Fp8Weights(*models)` quantizes every block linear once and keeps the FP8 copy beside the
bf16 weight (the engine checks the memory first; a two-expert model passes both experts, and its
check counts both copies); `Fp8Weights.enabled()` switches them on for one
request and back off afterwards, so FP8 is a per-request choice on one loaded model. The swap is
a class change of each `nn.Linear` to `Fp8Linear` (same parameters, an extra buffer pair), not an
edit of the model's code. The feed-forward's GELU epilogue GEMM has no FP8 form, so under FP8 the
GELU runs after the FP8 GEMM (fused by the compiler into its epilogue pass).

Attention stays bf16: no FP8/INT8 attention kernel was measured faster than cuDNN's bf16 on
Hopper (SageAttention 1.0.6 and FlexAttention lost, see the anchors README).

On the CPU there are no FP8 GEMMs; with `emulate=True` the same quantization runs and the GEMM
is computed on the dequantized operands in float32, which is what the tests compare against a
reference quantize-dequantize computation. Elsewhere `Fp8UnsupportedError` says why FP8 cannot run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from spec.acceleration import AccelerationError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
MIN_SCALE = 1e-12  # an all-zero row or token keeps a finite scale
MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first GPUs with FP8 tensor cores


class Fp8UnsupportedError(AccelerationError):
    """FP8 was asked for where it cannot run; the message says why."""

    code = "fp8_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__("acceleration.fp8", message)


def fp8_support(device: torch.device, *, emulate: bool = False) -> str | None:
    """None when FP8 linears can run on `device`, else the reason they cannot."""
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
            name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
            return f"FP8 GEMMs need compute capability 8.9+ (Ada, Hopper); {name} has {capability}"
        return None
    if emulate:
        return None
    return f"FP8 needs a CUDA GPU with FP8 tensor cores; this engine runs on {device.type} (emulation is for tests)"


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric e4m3 quantization: x [M, K] -> (x_fp8 [M, K], scale [M, 1] float32) with
    x ~= x_fp8 * scale. Rows are tokens for activations and output channels for weights."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp(min=MIN_SCALE) / FP8_MAX  # [M, 1]
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


_compiled_quantize_rows = None


def _quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_rows`, compiled once per process on CUDA when not already inside a compiled graph."""
    global _compiled_quantize_rows
    if not x.is_cuda or torch.compiler.is_compiling():
        return quantize_rows(x)
    if _compiled_quantize_rows is None:
        _compiled_quantize_rows = torch.compile(quantize_rows, dynamic=True)
    return _compiled_quantize_rows(x)


def fp8_matmul(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    emulate: bool,
) -> torch.Tensor:
    """x [..., K] @ W.T + bias with W ~= weight_fp8 [N, K] * weight_scale [N, 1]; out in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])  # [M, K]
    x_fp8, x_scale = _quantize_activations(rows)
    if emulate:
        out = (x_fp8.float() * x_scale) @ (weight_fp8.float() * weight_scale).t()  # [M, N] float32
        if bias is not None:
            out = out + bias.float()
        out = out.to(x.dtype)
    else:
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = torch._scaled_mm(
            x_fp8, weight_fp8.t(), scale_a=x_scale, scale_b=weight_scale.t(), bias=None, out_dtype=out_dtype
        )  # [M, N]; weight_fp8.t() is column-major as cuBLASLt wants
        if bias is not None:
            out = out + bias.to(out_dtype)
        out = out.to(x.dtype)
    return out.view(*x.shape[:-1], weight_fp8.shape[0])


class Fp8Linear(nn.Linear):
    """An `nn.Linear` that also holds an FP8 copy of its weight and uses it while `fp8_active`.

    Made by changing the class of an existing `nn.Linear` (`Fp8Weights.prepare`): the weight and
    bias Parameters stay the very same objects.
    """

    weight_fp8: torch.Tensor  # [N, K] float8_e4m3fn
    weight_scale: torch.Tensor  # [N, 1] float32
    fp8_active: bool
    fp8_emulate: bool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8_active:
            return fp8_matmul(x, self.weight_fp8, self.weight_scale, self.bias, emulate=self.fp8_emulate)
        return F.linear(x, self.weight, self.bias)


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The linear layers inside the transformer blocks: where FP8 pays (embeddings and the output
    projection are small and precision-sensitive, and stay as they are)."""
    return [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]


def fp8_extra_bytes(*models: nn.Module) -> int:
    """Memory the FP8 copies of `models` add beside the existing weights (1 byte per weight + 4
    per row); every expert of a two-expert model counts."""
    return sum(m.weight.numel() + 4 * m.weight.shape[0] for model in models for m in block_linears(model))


class Fp8Weights:
    """The FP8 copies of one loaded model's block linears (every expert's, for a two-expert
    model), made once, switched per request."""

    def __init__(self, *models: nn.Module, emulate: bool) -> None:
        if not models:
            raise ValueError("Fp8Weights needs at least one model")
        self.models = models
        self.emulate = emulate
        self.linears: list[Fp8Linear] = []
        with torch.no_grad():
            for linear in (linear for model in models for linear in block_linears(model)):
                weight_fp8, weight_scale = quantize_rows(linear.weight.detach())
                linear.__class__ = Fp8Linear
                linear.register_buffer("weight_fp8", weight_fp8, persistent=False)
                linear.register_buffer("weight_scale", weight_scale, persistent=False)
                linear.fp8_active = False
                linear.fp8_emulate = emulate
                self.linears.append(linear)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def enabled(self) -> Iterator[None]:
        """FP8 GEMMs in every block linear for the duration of the block (one request)."""
        gelus = [m for model in self.models for m in model.modules() if getattr(m, "fused_epilogue", False)]
        for linear in self.linears:
            linear.fp8_active = True
        for gelu in gelus:
            gelu.fused_epilogue = False  # the bf16 GELU-epilogue GEMM would bypass the FP8 weight
        try:
            yield
        finally:
            for linear in self.linears:
                linear.fp8_active = False
            for gelu in gelus:
                gelu.fused_epilogue = True
