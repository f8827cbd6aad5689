"""The model registry: which models exist and which request parameters each accepts.

This is the one place where sizes, frame rules and sampling defaults live. The API imports it to
validate requests before a job is queued, so it must stay import-light: standard library only
(a test asserts that importing it does not import torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Bounds shared by every model: outside them a request is refused before any work starts.
MIN_STEPS = 1
MAX_STEPS = 200
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 20.0
MIN_FPS = 1
MAX_FPS = 60

# Wan's VAE compresses time by 4 (plus the first frame), so a video has 4k + 1 frames.
FRAME_STEP = 4

# The sizes OpenAI's Videos API offers; each model says which of them it serves (`openai_sizes`).
OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")


class UnknownModelError(KeyError):
    """Raised by `get_spec` for a name the registry does not hold."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; known models: {', '.join(spec.name for spec in list_specs())}"


class SpecViolationError(ValueError):
    """A request parameter that the model's spec does not allow; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def format_seconds(num_frames: int, fps: int) -> str:
    """A clip's length as OpenAI writes it, a string: "4", "4.062" (at most 3 decimals, no trailing zeros)."""
    return f"{num_frames / fps:.3f}".rstrip("0").rstrip(".")


def parse_size(size: str) -> tuple[int, int]:
    """Parse "WxH" into (width, height); raises ValueError on anything else."""
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"size must look like '832x480', got {size!r}")
    return int(width), int(height)


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts and what it defaults to.

    Sizes are "WxH" strings (width first, as users write them). Variants of a family are new
    entries that override fields, not conditionals in the engine.
    """

    name: str
    family: str
    hub_id: str | None
    sizes: tuple[str, ...]
    default_size: str
    min_frames: int
    max_frames: int
    default_frames: int
    default_steps: int
    default_guidance: float
    default_fps: int
    flow_shift: float
    max_prompt_chars: int
    description: str = ""
    image_input: str = "none"  # an `input_reference` image: "none" (text-to-video), "optional" or "required"

    def __post_init__(self) -> None:
        # A spec that contradicts itself is a programming error: fail at import, not per request.
        if self.default_size not in self.sizes:
            raise ValueError(f"{self.name}: default size {self.default_size} not in {self.sizes}")
        if not self.frames_allowed(self.default_frames):
            raise ValueError(f"{self.name}: default frames {self.default_frames} breaks the frame rule")
        for size in self.sizes:
            width, height = parse_size(size)
            if width % 16 or height % 16:
                raise ValueError(f"{self.name}: {size} is not a multiple of 16 (VAE 8 x patch 2)")

    @property
    def default_width(self) -> int:
        return parse_size(self.default_size)[0]

    @property
    def default_height(self) -> int:
        return parse_size(self.default_size)[1]

    def frames_allowed(self, num_frames: int) -> bool:
        """True when `num_frames` is 4k + 1 and within [min_frames, max_frames]."""
        return self.min_frames <= num_frames <= self.max_frames and (num_frames - 1) % FRAME_STEP == 0

    @property
    def takes_image(self) -> bool:
        """Whether a request may carry an image (`input_reference`)."""
        return self.image_input != "none"

    @property
    def openai_sizes(self) -> tuple[str, ...]:
        """The sizes of OpenAI's Videos API that this model serves (a client may switch unchanged)."""
        return tuple(size for size in OPENAI_SIZES if size in self.sizes)

    def frames_for_seconds(self, seconds: float, fps: int) -> int:
        """The allowed frame count nearest to `seconds` of video at `fps` (a clip lasts num_frames / fps).

        Raises `SpecViolationError` (param "seconds") when `seconds` lies outside the model's range by
        more than half a frame step, so "4" maps to 65 frames at 16 fps but "8" is refused by a model
        that renders at most 81 frames.
        """
        if not math.isfinite(seconds) or seconds <= 0:
            raise SpecViolationError("seconds", f"seconds must be a positive number, got {seconds:g}")
        target = seconds * fps
        slack = FRAME_STEP / 2
        if not self.min_frames - slack <= target <= self.max_frames + slack:
            raise SpecViolationError(
                "seconds",
                f"{self.name} renders {format_seconds(self.min_frames, fps)} to {format_seconds(self.max_frames, fps)}"
                f" seconds at {fps} fps ({self.min_frames} to {self.max_frames} frames), got {seconds:g}",
            )
        return min(self.allowed_frames(), key=lambda n: (abs(n - target), n))

    def allowed_frames(self) -> list[int]:
        """Every frame count this model accepts, ascending (for error messages and UIs)."""
        return [n for n in range(self.min_frames, self.max_frames + 1) if self.frames_allowed(n)]

    def validate_request(self, request: object) -> None:
        """`validate` for anything with a `GenerationRequest`'s fields."""
        self.validate(
            width=request.width,  # type: ignore[attr-defined]
            height=request.height,  # type: ignore[attr-defined]
            num_frames=request.num_frames,  # type: ignore[attr-defined]
            num_inference_steps=request.num_inference_steps,  # type: ignore[attr-defined]
            guidance_scale=request.guidance_scale,  # type: ignore[attr-defined]
            fps=request.fps,  # type: ignore[attr-defined]
            prompt=request.prompt,  # type: ignore[attr-defined]
        )

    def validate(
        self,
        *,
        width: int,
        height: int,
        num_frames: int,
        num_inference_steps: int,
        guidance_scale: float,
        fps: int,
        prompt: str,
    ) -> None:
        """Raise `SpecViolationError` for the first parameter this model does not accept."""
        if not prompt.strip():
            raise SpecViolationError("prompt", "prompt must not be empty")
        if len(prompt) > self.max_prompt_chars:
            raise SpecViolationError("prompt", f"prompt longer than {self.max_prompt_chars} characters")
        if f"{width}x{height}" not in self.sizes:
            raise SpecViolationError("size", f"size {width}x{height} not one of {', '.join(self.sizes)}")
        if not self.frames_allowed(num_frames):
            raise SpecViolationError(
                "num_frames",
                f"num_frames must be 4k+1 in [{self.min_frames}, {self.max_frames}], got {num_frames}",
            )
        if not MIN_STEPS <= num_inference_steps <= MAX_STEPS:
            raise SpecViolationError("num_inference_steps", f"steps must be in [{MIN_STEPS}, {MAX_STEPS}]")
        if not MIN_GUIDANCE <= guidance_scale <= MAX_GUIDANCE:
            raise SpecViolationError("guidance_scale", f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]")
        if not MIN_FPS <= fps <= MAX_FPS:
            raise SpecViolationError("fps", f"fps must be in [{MIN_FPS}, {MAX_FPS}]")


TINY_WAN = ModelSpec(
    name="tiny-wan",
    family="wan",
    hub_id=None,
    sizes=("64x64", "96x64", "64x96"),
    default_size="64x64",
    min_frames=5,
    max_frames=33,
    default_frames=9,
    default_steps=4,
    default_guidance=5.0,
    default_fps=8,
    flow_shift=3.0,
    max_prompt_chars=2000,
    description="Random-weight Wan2.1 of a few MB, written locally on first use; for tests and CI.",
)

WAN21_T2V_1_3B = ModelSpec(
    name="wan2.1-t2v-1.3b",
    family="wan",
    hub_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    # Trained at 480p; its model card says it also renders 720p, less stably. 720p is what OpenAI
    # clients ask for (1280x720 / 720x1280), so it is served rather than refused.
    sizes=("832x480", "480x832", "1280x720", "720x1280"),
    default_size="832x480",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=50,
    default_guidance=5.0,
    default_fps=16,
    flow_shift=3.0,
    max_prompt_chars=2000,
    description="Wan2.1 text-to-video, 1.3B parameters, 480p.",
)

WAN21_T2V_14B = ModelSpec(
    name="wan2.1-t2v-14b",
    family="wan",
    hub_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
    sizes=("832x480", "480x832", "1280x720", "720x1280"),
    default_size="1280x720",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=50,
    default_guidance=5.0,
    default_fps=16,
    # 5.0 is the reference value for 720p; 3.0 is suggested for 480p, but one value per model keeps
    # the spec simple.
    flow_shift=5.0,
    max_prompt_chars=2000,
    description="Wan2.1 text-to-video, 14B parameters, 480p and 720p.",
)

_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (TINY_WAN, WAN21_T2V_1_3B, WAN21_T2V_14B)}


def get_spec(name: str) -> ModelSpec:
    """The spec registered under `name`; raises `UnknownModelError` (a KeyError) otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise UnknownModelError(name) from None


def find_spec(name_or_hub_id: str) -> ModelSpec | None:
    """The spec whose name or hub id is `name_or_hub_id`, or None."""
    if name_or_hub_id in _SPECS:
        return _SPECS[name_or_hub_id]
    return next((spec for spec in _SPECS.values() if spec.hub_id == name_or_hub_id), None)


def list_specs() -> list[ModelSpec]:
    """All registered specs, in registration order."""
    return list(_SPECS.values())
