"""Frames -> an H.264 mp4 and a JPEG thumbnail next to it."""

from __future__ import annotations

from typing import ClassVar

from engine.io.video import encode_mp4, write_thumbnail
from engine.stages.base import Stage
from engine.stages.state import PipelineState
from spec.stages import Stage as StageName


class EncodingStage(Stage):
    """Writes `output_path` (mp4) and `output_path` with a .jpg suffix; runs only when a path is set."""

    name: ClassVar[str] = StageName.ENCODING
    requires: ClassVar[tuple[str, ...]] = ("frames", "output_path")
    provides: ClassVar[tuple[str, ...]] = ("video_path", "thumbnail_path")

    def enabled(self, state: PipelineState) -> bool:
        return state.output_path is not None

    def forward(self, state: PipelineState) -> None:
        state.video_path = encode_mp4(state.frames, state.output_path, fps=state.request.fps)
        state.thumbnail_path = write_thumbnail(state.frames, state.output_path.with_suffix(".jpg"))
