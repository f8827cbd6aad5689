"""Pipeline stages: each declares its inputs/outputs and writes only `forward`."""

from engine.stages.base import Stage, StageContractError
from engine.stages.state import PipelineState

__all__ = ["PipelineState", "Stage", "StageContractError"]
