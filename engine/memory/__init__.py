"""Memory: the planner (torch-free, importable by the API), offload hooks and the tiled VAE.

`engine.memory.planner` decides; `engine.memory.offload` (layer-wise and component offload) and
`engine.memory.vae_tiling` (tiled decoding) carry the decisions out; `engine.memory.footprint`
reads a checkpoint's sizes. Only the planner is imported here, so `import engine.memory` stays
free of torch.
"""

from engine.memory.planner import (
    KNOWN_FOOTPRINTS,
    MemoryBudgetError,
    MemoryPlan,
    ModelFootprint,
    RequestShape,
    plan_for_placement,
    plan_memory,
)

__all__ = [
    "KNOWN_FOOTPRINTS",
    "MemoryBudgetError",
    "MemoryPlan",
    "ModelFootprint",
    "RequestShape",
    "plan_for_placement",
    "plan_memory",
]
