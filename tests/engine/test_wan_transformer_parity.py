"""Our Wan DiT against diffusers' WanTransformer3DModel: same weights, same outputs, same files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from engine.models.safetensors_io import INDEX_NAME, load_state_dict, save_state_dict
from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig

# Small but not degenerate: 3 heads of 24 (uneven t/h/w RoPE split: 8/8/8), 3 layers.
CONFIG = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=3,
    attention_head_dim=24,
    in_channels=16,
    out_channels=16,
    text_dim=40,
    freq_dim=32,
    ffn_dim=96,
    num_layers=3,
    cross_attn_norm=True,
    eps=1e-6,
    rope_max_seq_len=64,
)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.fixture(scope="module")
def reference() -> DiffusersWan:
    torch.manual_seed(0)
    return DiffusersWan(**CONFIG).eval()


def random_inputs(batch: int = 2, dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 16, 3, 6, 10, generator=generator).to(dtype)  # non-square token grid
    timestep = torch.tensor([999.0, 321.5][:batch])
    text = torch.randn(batch, 12, CONFIG["text_dim"], generator=generator).to(dtype)
    return latents, timestep, text


def ours_from(reference: DiffusersWan) -> WanTransformer3DModel:
    model = WanTransformer3DModel(WanTransformerConfig(**CONFIG)).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


@torch.no_grad()
def test_forward_matches_diffusers_in_float32(reference: DiffusersWan) -> None:
    latents, timestep, text = random_inputs()
    expected = reference(latents, timestep, text, return_dict=False)[0]
    actual = ours_from(reference)(latents, timestep, text)
    assert actual.shape == expected.shape == latents.shape
    assert relative_error(actual, expected) < 1e-5


@torch.no_grad()
def test_batched_cfg_forward_equals_two_single_forwards(reference: DiffusersWan) -> None:
    model = ours_from(reference)
    latents, _, text = random_inputs()
    latents = latents[:1].expand(2, -1, -1, -1, -1)
    timestep = torch.tensor([500.0, 500.0])
    both = model(latents, timestep, text)
    cond = model(latents[:1], timestep[:1], text[:1])
    uncond = model(latents[1:], timestep[1:], text[1:])
    assert relative_error(both, torch.cat([cond, uncond])) < 1e-5


def test_parameter_names_match_diffusers(reference: DiffusersWan) -> None:
    ours = WanTransformer3DModel(WanTransformerConfig(**CONFIG))
    assert ours.state_dict().keys() == reference.state_dict().keys()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


@torch.no_grad()
def test_loads_diffusers_saved_folder_single_and_sharded(reference: DiffusersWan, tmp_path: Path) -> None:
    latents, timestep, text = random_inputs()
    expected = reference(latents, timestep, text, return_dict=False)[0]

    reference.save_pretrained(tmp_path / "single")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / INDEX_NAME).exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1

    for folder in ("single", "sharded"):
        model = WanTransformer3DModel.from_pretrained(tmp_path / folder, dtype=torch.float32)
        assert relative_error(model(latents, timestep, text), expected) < 1e-5


def test_own_sharded_save_round_trips(reference: DiffusersWan, tmp_path: Path) -> None:
    ours = ours_from(reference)
    ours.save_pretrained(tmp_path, max_shard_bytes=64 * 1024)
    assert (tmp_path / INDEX_NAME).exists()
    loaded = load_state_dict(tmp_path)
    assert loaded.keys() == ours.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in ours.state_dict().items())
    # and diffusers reads what we write
    again = DiffusersWan.from_pretrained(tmp_path)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())


def test_unsharded_save_writes_one_file(tmp_path: Path) -> None:
    paths = save_state_dict({"a": torch.zeros(3), "b": torch.ones(2)}, tmp_path)
    assert [p.name for p in paths] == ["diffusion_pytorch_model.safetensors"]
    assert not (tmp_path / INDEX_NAME).exists()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_half_precision_load_keeps_diffusers_fp32_modules(
    reference: DiffusersWan, tmp_path: Path, dtype: torch.dtype
) -> None:
    reference.save_pretrained(tmp_path)
    ours = WanTransformer3DModel.from_pretrained(tmp_path, dtype=dtype)
    theirs = DiffusersWan.from_pretrained(tmp_path, torch_dtype=dtype)
    their_dtypes = {k: v.dtype for k, v in theirs.state_dict().items()}
    assert {k: v.dtype for k, v in ours.state_dict().items()} == their_dtypes
    assert torch.float32 in their_dtypes.values() and dtype in their_dtypes.values()

    latents, timestep, text = random_inputs(dtype=dtype)
    expected = theirs(latents, timestep, text, return_dict=False)[0]
    actual = ours(latents, timestep, text)
    assert actual.dtype == dtype
    assert relative_error(actual, expected) < 1e-3  # same arithmetic: identical in practice


def test_half_an_image_conditioning_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="together"):
        WanTransformerConfig(**{**CONFIG, "image_dim": 1280})


def test_unknown_config_field_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown"):
        WanTransformerConfig.from_dict({**CONFIG, "num_experts": 8})
