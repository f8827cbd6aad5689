"""A pipeline is an ordered list of stages run over one state object."""

from __future__ import annotations

from collections.abc import Sequence

from engine.stages.base import Stage
from engine.stages.state import PipelineState


class Pipeline:
    """Runs its stages in order; a stage's exception ends the run and propagates unchanged."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        names = [stage.name for stage in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate stage names in {names}")
        self.stages = list(stages)

    def stage(self, name: str) -> Stage:
        """The stage called `name` (raises KeyError)."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def run(self, state: PipelineState) -> PipelineState:
        for stage in self.stages:
            if stage.enabled(state):
                stage(state)
        return state
