"""`Engine`: load a model once, keep it warm, generate videos on request."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from engine.attention import resolve_backend
from engine.models.components import load_wan_components
from engine.models.locate import locate_model
from engine.optimize import optimize_transformer, should_compile
from engine.pipelines.wan_t2v import WanT2VPipeline
from engine.registry import (
    FRAME_STEP,
    MAX_GUIDANCE,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    ModelSpec,
    SpecViolationError,
)
from engine.request import GenerationRequest, GenerationResult
from engine.settings import EngineSettings
from engine.stages.state import OnStage, OnStep

# Height and width must split into whole 2x2 patches of 8x8-downsampled latents.
SIZE_MULTIPLE = 16


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators (what the checkpoints are trained in), float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Engine:
    """One loaded text-to-video model on one device.

    `model` is a registry name (see `engine.registry`), a local diffusers-format folder, or a
    Hugging Face hub id. Everything is loaded in the constructor and stays resident, so
    `generate` pays only for the generation. Generations on one engine run one at a time (a
    lock serialises them): one engine per GPU, one GPU per process.

    `compile` ("auto", "on", "off"; None takes `VIDQ_COMPILE`) compiles the DiT's blocks; the
    first request of each shape pays the compile time (reported as the "compile" stage timing).

    `dtype` applies to the DiT and the text encoder; the VAE always runs in float32.
    `attention_backend` is one of `engine.attention.BACKENDS`; None takes `VIDQ_ATTENTION_BACKEND`
    (default "auto"). A backend the device cannot run is rejected before anything is loaded.
    """

    def __init__(
        self,
        model: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        models_dir: Path | None = None,
        attention_backend: str | None = None,
        compile: str | None = None,
    ) -> None:
        settings = EngineSettings()
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        requested_backend = attention_backend or settings.attention_backend
        resolve_backend(requested_backend, self.device)  # fail fast, before minutes of loading

        located = locate_model(model, models_dir or settings.models_dir)
        self.folder = located.folder
        self.model_id = located.model_id
        self.spec: ModelSpec | None = located.spec

        self.components = load_wan_components(located.folder, self.device, self.dtype)
        self.attention_backend = self.components.transformer.set_attention_backend(requested_backend)
        self.compiled = should_compile(compile or settings.compile, self.device)
        optimize_transformer(self.components.transformer, fuse=settings.fuse_projections, compile=self.compiled)
        overrides = {"flow_shift": self.spec.flow_shift} if self.spec is not None else {}
        self.pipeline = WanT2VPipeline(self.components, self.device, self.model_id, overrides)
        self._lock = threading.Lock()

    def check_request(self, request: GenerationRequest) -> None:
        """Raise `SpecViolationError` for a request this model cannot run, before any work.

        With a registry spec its rules apply (sizes, frame range, ...); for unregistered folders,
        only what the architecture itself needs.
        """
        if self.spec is not None:
            self.spec.validate(
                width=request.width,
                height=request.height,
                num_frames=request.num_frames,
                num_inference_steps=request.num_inference_steps,
                guidance_scale=request.guidance_scale,
                fps=request.fps,
                prompt=request.prompt,
            )
            return
        if request.width <= 0 or request.height <= 0 or request.width % SIZE_MULTIPLE or request.height % SIZE_MULTIPLE:
            raise SpecViolationError("size", f"width and height must be positive multiples of {SIZE_MULTIPLE}")
        if request.num_frames < 1 or (request.num_frames - 1) % FRAME_STEP:
            raise SpecViolationError("num_frames", "num_frames must be 4k+1")
        if not MIN_STEPS <= request.num_inference_steps <= MAX_STEPS:
            raise SpecViolationError("num_inference_steps", f"steps must be in [{MIN_STEPS}, {MAX_STEPS}]")
        if not MIN_GUIDANCE <= request.guidance_scale <= MAX_GUIDANCE:
            raise SpecViolationError("guidance_scale", f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]")
        if request.fps < 1:
            raise SpecViolationError("fps", "fps must be positive")

    def generate(
        self,
        request: GenerationRequest,
        on_step: OnStep | None = None,
        on_stage: OnStage | None = None,
        *,
        output_path: Path | None = None,
    ) -> GenerationResult:
        """Run one generation; blocks until done.

        `on_step(StepInfo)` is called after every denoising step and `on_stage(name)` when each of
        "text_encoding", "denoising", "decoding" (and "encoding", only with `output_path`) starts.
        An exception raised by either callback stops the generation and propagates (how a
        caller cancels). With `output_path`, the mp4 is written there and a JPEG thumbnail
        beside it (same name, .jpg).
        """
        self.check_request(request)
        with self._lock:
            return self.pipeline(request, on_step=on_step, on_stage=on_stage, output_path=output_path)
