"""Wan VAE decoding in overlapping spatial tiles, streamed over time, blended without seams.

The Wan VAE decoder is causal in time: diffusers decodes one latent frame per call and carries
each causal convolution's last frames in a cache, so decoding is already chunked in time and
exact across chunk boundaries (no temporal overlap is needed, and none is blended). What grows
with the video is (a) the activations of one latent frame at full resolution, which tiling
bounds, and (b) the output video, which diffusers' untiled path assembles by repeated
concatenation (twice its size at the end). Here each tile streams its latent frames through the
decoder and adds each chunk of output frames, weighted, straight into one preallocated output.

Tiles overlap by `overlap` latent pixels; inside an overlap each tile's weight ramps linearly
towards its edge and the weights are normalised to sum to one, so the result is a convex blend
that leaves no seam. Away from the overlaps a tile's output equals the untiled decode except
where the tile's border changes the receptive field (zero padding instead of neighbours) and
through the decoder's per-frame spatial attention (mid block), which sees one tile instead of
the frame: hence "close", not "equal" (the tests bound both errors on a random tiny VAE).
"""

from __future__ import annotations

import torch


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, length) with at least `overlap` of overlap;
    the last tile is shifted back to end at `length` (so every tile is full-size)."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp_weights(length: int, start: int, total: int, ramp: int, device: torch.device) -> torch.Tensor:
    """1-D blend weights [length] for a tile at `start` of `total`: ramps of `ramp` pixels towards
    each edge that borders another tile, 1 elsewhere (strictly positive everywhere)."""
    weights = torch.ones(length, device=device)
    if ramp <= 0:
        return weights
    edge = (torch.arange(ramp, device=device, dtype=torch.float32) + 0.5) / ramp  # (0, 1)
    if start > 0:
        weights[:ramp] = edge[: min(ramp, length)]
    if start + length < total:
        weights[-ramp:] = torch.minimum(weights[-ramp:], edge.flip(0)[: min(ramp, length)])
    return weights


@torch.no_grad()
def decode_tiled(vae: torch.nn.Module, latents: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Decode un-normalised latents [1, z, F', h, w] with diffusers' `AutoencoderKLWan` in tiles of
    `tile` x `tile` latent pixels overlapping by `overlap`; -> video [1, 3, F, 8h, 8w] in [-1, 1].

    Uses the VAE's decoder and causal cache the way its own `_decode` does (`clear_cache`,
    `_feat_map`, `_conv_idx`), one latent frame per call. The Wan2.2 VAE (`patch_size` 2, 16x
    spatial) decodes to 2x2 pixel patches in channels; each chunk is unpatchified (a pixel
    shuffle, local) before it is blended, so the same tiling applies.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

    patch_size = getattr(vae.config, "patch_size", None)
    batch, _, latent_frames, height, width = latents.shape
    scale = vae.spatial_compression_ratio if hasattr(vae, "spatial_compression_ratio") else 8
    tile_h, tile_w = min(tile, height), min(tile, width)
    rows, cols = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    ramp = overlap * scale

    output: torch.Tensor | None = None  # [B, 3, F, 8h, 8w], allocated once the frame count is known
    weight_sum = torch.zeros(height * scale, width * scale, device=latents.device)  # [8h, 8w]
    for top in rows:
        for left in cols:
            weights = (
                _ramp_weights(tile_h * scale, top * scale, height * scale, ramp, latents.device)[:, None]
                * (_ramp_weights(tile_w * scale, left * scale, width * scale, ramp, latents.device)[None, :])
            )  # [8 tile_h, 8 tile_w]
            y0, x0 = top * scale, left * scale
            y1, x1 = y0 + tile_h * scale, x0 + tile_w * scale
            weight_sum[y0:y1, x0:x1] += weights
            vae.clear_cache()
            z = vae.post_quant_conv(latents[:, :, :, top : top + tile_h, left : left + tile_w])  # [B, z, F', th, tw]
            frame = 0
            for index in range(latent_frames):
                vae._conv_idx = [0]
                chunk = vae.decoder(
                    z[:, :, index : index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0
                )  # [B, 3 (x 2 x 2), 1 (first) or 4, 8 th, 8 tw]
                if patch_size is not None:
                    chunk = unpatchify(chunk, patch_size=patch_size)  # [B, 3, frames, 16 th, 16 tw]
                if output is None:
                    frames = chunk.shape[2] + (latent_frames - 1) * vae.config.scale_factor_temporal
                    output = torch.zeros(batch, chunk.shape[1], frames, height * scale, width * scale,
                                         device=latents.device, dtype=chunk.dtype)  # fmt: skip
                count = chunk.shape[2]
                output[:, :, frame : frame + count, y0:y1, x0:x1] += chunk.clamp(-1.0, 1.0) * weights
                frame += count
            vae.clear_cache()
    assert output is not None
    output /= weight_sum
    return output.clamp_(-1.0, 1.0)
