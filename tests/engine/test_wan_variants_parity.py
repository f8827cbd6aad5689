"""The Wan DiT variants against diffusers' WanTransformer3DModel on the same weights.

Wan2.1 I2V (image embedder + image cross-attention, 36 input channels), with and without fused
projections and with the first-last-frame position embedding; Wan2.2 TI2V (48 channels, one
timestep per token).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel as DiffusersWan

from engine.models.wan_transformer import WanTransformer3DModel, WanTransformerConfig

BASE = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=3,
    attention_head_dim=24,
    text_dim=40,
    freq_dim=32,
    ffn_dim=96,
    num_layers=2,
    cross_attn_norm=True,
    eps=1e-6,
    rope_max_seq_len=64,
)
# added_kv_proj_dim is the model width (72 = 3 x 24), as in the 14B (5120)
I2V = dict(BASE, in_channels=36, out_channels=16, image_dim=20, added_kv_proj_dim=72)
FLF2V = dict(I2V, pos_embed_seq_len=2 * 5)
TI2V = dict(BASE, in_channels=48, out_channels=48)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def pair(config: dict) -> tuple[DiffusersWan, WanTransformer3DModel]:
    torch.manual_seed(0)
    reference = DiffusersWan(**config).eval()
    with torch.no_grad():  # diffusers initialises some tables to zeros: make every weight matter
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ours = WanTransformer3DModel(WanTransformerConfig(**config)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def inputs(channels: int, batch: int = 2, image_tokens: int = 5, image_dim: int = 20):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, channels, 3, 6, 10, generator=generator)
    text = torch.randn(batch, 512, BASE["text_dim"], generator=generator)  # diffusers splits at 512
    image = torch.randn(1, image_tokens, image_dim, generator=generator).expand(batch, -1, -1)
    return latents, text, image


@pytest.mark.parametrize("fused", [False, True])
@torch.no_grad()
def test_i2v_forward_matches_diffusers(fused: bool) -> None:
    reference, ours = pair(I2V)
    if fused:
        ours.fuse_projections()
    latents, text, image = inputs(36)
    timestep = torch.tensor([999.0, 321.5])
    expected = reference(latents, timestep, text, encoder_hidden_states_image=image, return_dict=False)[0]
    actual = ours(latents, timestep, text, image)
    assert actual.shape == expected.shape == (2, 16, 3, 6, 10)
    assert relative_error(actual, expected) < 1e-5
    # the image really conditions the output
    assert relative_error(ours(latents, timestep, text, image.flip(1).flip(2)), expected) > 1e-3


@torch.no_grad()
def test_first_last_frame_position_embedding_matches_diffusers() -> None:
    reference, ours = pair(FLF2V)
    latents, text, image = inputs(36, batch=1)
    image = torch.cat([image, image.flip(1)])  # first and last frame's tokens: [2, 5, D], viewed as [1, 10, D]
    expected = reference(latents, torch.tensor([500.0]), text, encoder_hidden_states_image=image, return_dict=False)
    assert relative_error(ours(latents, torch.tensor([500.0]), text, image), expected[0]) < 1e-5


@torch.no_grad()
def test_image_model_refuses_a_call_without_image() -> None:
    _, ours = pair(I2V)
    latents, text, _ = inputs(36, batch=1)
    with pytest.raises(ValueError, match="image"):
        ours(latents, torch.tensor([10.0]), text)


@torch.no_grad()
def test_per_token_timesteps_match_diffusers() -> None:
    reference, ours = pair(TI2V)
    latents, text, _ = inputs(48)
    tokens = 3 * 3 * 5
    timestep = torch.full((2, tokens), 700.0)
    timestep[:, :15] = 0.0  # the first latent frame is clean (expand_timesteps)
    expected = reference(latents, timestep, text, return_dict=False)[0]
    actual = ours(latents, timestep, text)
    assert relative_error(actual, expected) < 1e-5
    # equal per-token timesteps are the scalar timestep
    same = ours(latents, torch.full((2, tokens), 700.0), text)
    assert relative_error(same, ours(latents, torch.tensor([700.0, 700.0]), text)) < 1e-6


def test_i2v_parameter_names_match_diffusers() -> None:
    reference, _ = pair(I2V)
    ours = WanTransformer3DModel(WanTransformerConfig(**I2V))
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
