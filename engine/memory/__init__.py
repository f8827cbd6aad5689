"""Carrying out memory plans: offload hooks, the tiled VAE and reading a checkpoint's footprint.

The planner itself (what fits, where each component lives) is torch-free arithmetic in
`spec.memory`, so the API can size a request without the engine; `engine.memory.offload`
(layer-wise and component offload) and `engine.memory.vae_tiling` (tiled decoding) carry its
decisions out, and `engine.memory.footprint` reads a checkpoint folder's sizes.
"""
