"""A pipeline is an ordered list of stages run over one state object."""

from __future__ import annotations

from collections.abc import Sequence

from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.request import GenerationResult


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


def result_of(state: PipelineState) -> GenerationResult:
    """What a finished run hands its caller: the one mapping from pipeline state to result, shared by
    the native and the diffusers-backed pipelines."""
    peaks = state.stage_peak_memory_bytes
    return GenerationResult(
        frames=state.frames,
        stage_timings_s=state.stage_timings_s,
        peak_memory_bytes=max(peaks.values()) if peaks else None,
        seed=state.request.seed,
        latents=state.latents,
        video_path=state.video_path,
        thumbnail_path=state.thumbnail_path,
        stage_peak_memory_bytes=peaks,
        memory_plan=state.memory_plan,
        resumed_from_step=state.resumed_from_step,
        acceleration=state.acceleration,
    )
