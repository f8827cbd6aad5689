"""Pipelines: ordered stages over one `PipelineState`."""

from engine.pipelines.base import Pipeline
from engine.pipelines.wan_t2v import WanT2VPipeline

__all__ = ["Pipeline", "WanT2VPipeline"]
