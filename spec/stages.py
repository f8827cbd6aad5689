"""The stages a job passes through, named once.

The engine's stages carry these names (`engine.stages.*.name`), the memory planner estimates its
peaks per stage under them, the worker reports them as a job's `stage`, and the dashboard draws
its timeline in this order.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """In running order. Those up to decoding are the engine's; the last two are the worker's.

    The image stages run for image-to-video requests only (CLIP tokens, then the VAE-encoded
    first frame); like latent preparation they are quick, unannounced and span no progress.
    """

    TEXT_ENCODING = "text_encoding"
    IMAGE_ENCODING = "image_encoding"
    LATENT_PREPARATION = "latent_preparation"
    IMAGE_CONDITIONING = "image_conditioning"
    DENOISING = "denoising"
    DECODING = "decoding"
    ENCODING = "encoding"
    UPLOADING = "uploading"


# The stages a job's `progress` (0-100) spans, as [start, end) percentages. Latent preparation
# takes no visible time, so it has no span of its own; denoising moves with its steps.
PROGRESS_SPAN: dict[Stage, tuple[int, int]] = {
    Stage.TEXT_ENCODING: (0, 5),
    Stage.DENOISING: (5, 90),
    Stage.DECODING: (90, 95),
    Stage.ENCODING: (95, 97),
    Stage.UPLOADING: (97, 99),
}


def progress_percent(stage: Stage | str, step: int = 0, total: int = 0) -> int:
    """The job's progress at the start of `stage`, or `step` of `total` into denoising."""
    stage = Stage(stage)
    start, end = PROGRESS_SPAN[stage]
    if stage is Stage.DENOISING and total:
        return start + (end - start) * step // total
    return start
