"""The model registry: which models exist, and every fact about each.

This is the one place where sizes, frame rules, sampling defaults, a model's family (its queue),
its memory footprint and whether it is built in live. The API imports it to validate requests
before a job is queued, the worker to know what it can serve, the engine to load and check; so it
stays import-light: standard library only (a test asserts that importing it does not import torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spec.acceleration import ACCELERATION_FEATURES, UNCALIBRATED_FEATURES
from spec.errors import CodedError
from spec.memory import CLIP_DIM, DIFFUSERS_FOOTPRINTS, WAN22_VAE_FP32_BYTES, ModelFootprint, wan21_footprint

# Bounds shared by every model: outside them a request is refused before any work starts.
MIN_STEPS = 1
MAX_STEPS = 200
MIN_GUIDANCE = 0.0
MAX_GUIDANCE = 20.0
MIN_FPS = 1
MAX_FPS = 60

# Wan's VAE compresses time by 4 (plus the first frame), so a video has 4k + 1 frames; other
# families set their own step (`ModelSpec.frame_step`: LTX-Video 8, Mochi 6).
FRAME_STEP = 4
# Whether a model takes an input image: never, optionally (image-to-video when given), or always.
IMAGE_INPUTS = ("none", "optional", "required")

# The sizes OpenAI's Videos API offers; each model says which of them it serves (`openai_sizes`).
OPENAI_SIZES = ("720x1280", "1280x720", "1024x1792", "1792x1024")

# Whether a model takes an input image (the API's `input_reference`, the CLI's --image).
IMAGE_INPUTS = ("none", "optional", "required")


class UnknownModelError(CodedError, KeyError):
    """Raised by `get_spec` for a name the registry does not hold."""

    code = "unknown_model"
    param = "model"

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown model {self.name!r}; known models: {', '.join(spec.name for spec in list_specs())}"


class SpecViolationError(CodedError, ValueError):
    """A request parameter that the model's spec does not allow; `param` names the field."""

    code = "invalid_request"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


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
    entries that override fields, not conditionals in the engine. A video has `frame_step` k + 1
    frames (the VAE's temporal compression); sizes are multiples of `size_multiple` (the VAE's
    spatial compression x the transformer's patch). `image_input` says whether requests carry an
    input image (image-to-video). `flow_shift` is the native pipeline's scheduler shift (None for
    the families whose checkpoint's scheduler config decides).

    `default_guidance_2` is the guidance of the low-noise expert of a two-expert model (Wan2.2
    A14B), None for one-expert models.
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
    flow_shift: float | None
    max_prompt_chars: int
    description: str = ""
    frame_step: int = FRAME_STEP
    size_multiple: int = 16
    image_input: str = "none"  # an `input_reference` image: "none" (text-to-video), "optional" or "required"
    # The GPU memory it needs, for planning without loading (the API's 422 at submission); None
    # when unknown: the engine then reads it from the checkpoint at load time.
    footprint: ModelFootprint | None = None
    # Written locally on first use (random weights), so every install serves it.
    builtin: bool = False
    # The fast modes this model offers (`spec.acceleration`, run by `engine.acceleration`): cache
    # methods and "fp8". MagCache only where a calibrated schedule exists (`engine.acceleration.calibration`).
    acceleration: tuple[str, ...] = ()
    default_guidance_2: float | None = None
    # The most GPUs one job may span (`num_gpus`); a job asking for more would wait for a rank group
    # that can never load the model, so it is refused at submission instead.
    max_gpus: int = 8

    def __post_init__(self) -> None:
        # A spec that contradicts itself is a programming error: fail at import, not per request.
        if self.default_size not in self.sizes:
            raise ValueError(f"{self.name}: default size {self.default_size} not in {self.sizes}")
        if not self.frames_allowed(self.default_frames):
            raise ValueError(f"{self.name}: default frames {self.default_frames} breaks the frame rule")
        if self.image_input not in IMAGE_INPUTS:
            raise ValueError(f"{self.name}: image_input must be one of {IMAGE_INPUTS}, got {self.image_input!r}")
        unknown = sorted(set(self.acceleration) - set(ACCELERATION_FEATURES))
        if unknown:
            raise ValueError(f"{self.name}: unknown acceleration features {unknown}")
        for size in self.sizes:
            width, height = parse_size(size)
            if width % self.size_multiple or height % self.size_multiple:
                raise ValueError(f"{self.name}: {size} is not a multiple of {self.size_multiple} (VAE x patch)")

    @property
    def two_experts(self) -> bool:
        """True for Wan2.2 A14B-style models (a high-noise and a low-noise transformer)."""
        return self.default_guidance_2 is not None

    @property
    def default_width(self) -> int:
        return parse_size(self.default_size)[0]

    @property
    def default_height(self) -> int:
        return parse_size(self.default_size)[1]

    def frames_allowed(self, num_frames: int) -> bool:
        """True when `num_frames` is `frame_step` k + 1 and within [min_frames, max_frames]."""
        return self.min_frames <= num_frames <= self.max_frames and (num_frames - 1) % self.frame_step == 0

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
        slack = self.frame_step / 2
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
            has_image=getattr(request, "image", None) is not None,
            guidance_scale_2=getattr(request, "guidance_scale_2", None),
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
        has_image: bool | None = None,
        guidance_scale_2: float | None = None,
    ) -> None:
        """Raise `SpecViolationError` for the first parameter this model does not accept.

        `has_image` None skips the input-image rule (for callers that check the image elsewhere); an
        image given to a text-only model, or missing for an image-to-video one, is reported as
        `input_reference` (the API's name for it).
        """
        if not prompt.strip():
            raise SpecViolationError("prompt", "prompt must not be empty")
        if len(prompt) > self.max_prompt_chars:
            raise SpecViolationError("prompt", f"prompt longer than {self.max_prompt_chars} characters")
        if f"{width}x{height}" not in self.sizes:
            raise SpecViolationError("size", f"size {width}x{height} not one of {', '.join(self.sizes)}")
        if not self.frames_allowed(num_frames):
            raise SpecViolationError(
                "num_frames",
                f"num_frames must be {self.frame_step}k+1 in [{self.min_frames}, {self.max_frames}], got {num_frames}",
            )
        if not MIN_STEPS <= num_inference_steps <= MAX_STEPS:
            raise SpecViolationError("num_inference_steps", f"steps must be in [{MIN_STEPS}, {MAX_STEPS}]")
        if not MIN_GUIDANCE <= guidance_scale <= MAX_GUIDANCE:
            raise SpecViolationError("guidance_scale", f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]")
        if guidance_scale_2 is not None:
            if not self.two_experts:
                raise SpecViolationError("guidance_scale_2", f"{self.name} has one expert: no guidance_scale_2")
            if not MIN_GUIDANCE <= guidance_scale_2 <= MAX_GUIDANCE:
                raise SpecViolationError("guidance_scale_2", f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]")
        if not MIN_FPS <= fps <= MAX_FPS:
            raise SpecViolationError("fps", f"fps must be in [{MIN_FPS}, {MAX_FPS}]")
        if has_image is True and self.image_input == "none":
            raise SpecViolationError("input_reference", f"{self.name} is text-to-video only and takes no image")
        if has_image is False and self.image_input == "required":
            raise SpecViolationError("input_reference", f"{self.name} is image-to-video: it needs an input image")


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
    builtin=True,
    acceleration=ACCELERATION_FEATURES,
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
    footprint=wan21_footprint(dim=1536, ffn_dim=8960, num_layers=30, heads=12),
    acceleration=ACCELERATION_FEATURES,
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
    footprint=wan21_footprint(dim=5120, ffn_dim=13824, num_layers=40, heads=40),
    acceleration=ACCELERATION_FEATURES,
)


# --- Families served through diffusers' own pipelines (engine.pipelines.diffusers_backend) ---------------
# Sizes, frame rules, fps and defaults follow each checkpoint's published pipeline defaults and model card.
# The tiny-* entries are random-weight checkpoints of a few hundred kB written locally on first use
# (engine.models.tiny_diffusers), for tests and CI.

_TINY_DIFFUSERS = {
    "sizes": ("64x64", "96x64", "64x96"),
    "default_size": "64x64",
    "default_steps": 4,
    "default_fps": 8,
    "flow_shift": None,
    "max_prompt_chars": 2000,
    "hub_id": None,
}

TINY_LTX_VIDEO = ModelSpec(
    name="tiny-ltx-video",
    family="ltx",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    min_frames=9,
    max_frames=33,
    default_frames=9,
    default_guidance=3.0,
    frame_step=8,
    size_multiple=32,
    image_input="optional",
    description="Random-weight LTX-Video (text- and image-to-video) for tests and CI.",
    **_TINY_DIFFUSERS,
)

LTX_VIDEO = ModelSpec(
    name="ltx-video",
    footprint=DIFFUSERS_FOOTPRINTS["ltx-video"],
    family="ltx",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    hub_id="Lightricks/LTX-Video",
    sizes=("704x512", "512x704", "704x480", "480x704", "768x512", "512x768", "1216x704", "704x1216"),
    default_size="704x512",
    min_frames=9,
    max_frames=257,
    default_frames=161,
    default_steps=50,
    default_guidance=3.0,
    default_fps=25,
    flow_shift=None,
    max_prompt_chars=2000,
    frame_step=8,
    size_multiple=32,
    image_input="optional",
    description="LTX-Video 2B (Lightricks), text- and image-to-video from one checkpoint; sizes of 32.",
)

TINY_COGVIDEOX = ModelSpec(
    name="tiny-cogvideox",
    family="cogvideox",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    min_frames=5,
    max_frames=33,
    default_frames=9,
    default_guidance=6.0,
    description="Random-weight CogVideoX (5B layout) for tests and CI.",
    **_TINY_DIFFUSERS,
)

TINY_COGVIDEOX_I2V = ModelSpec(
    name="tiny-cogvideox-i2v",
    family="cogvideox",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    min_frames=5,
    max_frames=33,
    default_frames=9,
    default_guidance=6.0,
    image_input="required",
    description="Random-weight CogVideoX image-to-video (5B-I2V layout) for tests and CI.",
    # Learned position embeddings (as in 5B-I2V) fix the size to the checkpoint's sample size.
    **(_TINY_DIFFUSERS | {"sizes": ("64x64",)}),
)

_COGVIDEOX = {
    "family": "cogvideox",
    "sizes": ("720x480",),
    "default_size": "720x480",
    "min_frames": 9,
    "max_frames": 49,
    "default_frames": 49,
    "default_steps": 50,
    "default_guidance": 6.0,
    "default_fps": 8,
    "flow_shift": None,
    "max_prompt_chars": 2000,
}

COGVIDEOX_2B = ModelSpec(
    name="cogvideox-2b",
    footprint=DIFFUSERS_FOOTPRINTS["cogvideox-2b"],
    hub_id="THUDM/CogVideoX-2b",
    description="CogVideoX 2B text-to-video, 720x480.",
    **_COGVIDEOX,
)
COGVIDEOX_5B = ModelSpec(
    name="cogvideox-5b",
    footprint=DIFFUSERS_FOOTPRINTS["cogvideox-5b"],
    hub_id="THUDM/CogVideoX-5b",
    description="CogVideoX 5B text-to-video, 720x480.",
    **_COGVIDEOX,
)
COGVIDEOX_5B_I2V = ModelSpec(
    name="cogvideox-5b-i2v",
    footprint=DIFFUSERS_FOOTPRINTS["cogvideox-5b-i2v"],
    hub_id="THUDM/CogVideoX-5b-I2V",
    image_input="required",
    description="CogVideoX 5B image-to-video, 720x480: needs an input image.",
    **_COGVIDEOX,
)

TINY_MOCHI = ModelSpec(
    name="tiny-mochi",
    family="mochi",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    min_frames=7,
    max_frames=31,
    default_frames=7,
    default_guidance=4.5,
    frame_step=6,
    description="Random-weight Mochi-1 for tests and CI.",
    **_TINY_DIFFUSERS,
)

MOCHI_1 = ModelSpec(
    name="mochi-1",
    footprint=DIFFUSERS_FOOTPRINTS["mochi-1"],
    family="mochi",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    hub_id="genmo/mochi-1-preview",
    sizes=("848x480", "480x848"),
    default_size="848x480",
    min_frames=7,
    max_frames=163,
    default_frames=85,
    default_steps=64,
    default_guidance=4.5,
    default_fps=30,
    flow_shift=None,
    max_prompt_chars=2000,
    frame_step=6,
    description="Mochi-1 preview (Genmo, 10B), 480p at 30 fps; 6k+1 frames.",
)

TINY_HUNYUANVIDEO = ModelSpec(
    name="tiny-hunyuanvideo",
    family="hunyuanvideo",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    min_frames=5,
    max_frames=33,
    default_frames=9,
    default_guidance=6.0,
    description="Random-weight HunyuanVideo (Llama + CLIP text encoders) for tests and CI.",
    **_TINY_DIFFUSERS,
)

HUNYUANVIDEO = ModelSpec(
    name="hunyuanvideo",
    footprint=DIFFUSERS_FOOTPRINTS["hunyuanvideo"],
    family="hunyuanvideo",
    max_gpus=1,  # diffusers\' own pipeline: one GPU (sequence/CFG parallelism is native Wan only)
    hub_id="hunyuanvideo-community/HunyuanVideo",
    sizes=("1280x720", "720x1280", "960x544", "544x960", "848x480", "480x848"),
    default_size="1280x720",
    min_frames=5,
    max_frames=129,
    default_frames=129,
    default_steps=50,
    # Guidance-distilled: the scale is an input of the transformer (one pass per step, no negative prompt).
    default_guidance=6.0,
    default_fps=24,
    flow_shift=None,
    max_prompt_chars=2000,
    description="HunyuanVideo 13B (Tencent), 720p/540p/480p at 24 fps; the negative prompt is not used.",
)

DIFFUSERS_SPECS = (
    TINY_LTX_VIDEO,
    LTX_VIDEO,
    TINY_COGVIDEOX,
    TINY_COGVIDEOX_I2V,
    COGVIDEOX_2B,
    COGVIDEOX_5B,
    COGVIDEOX_5B_I2V,
    TINY_MOCHI,
    MOCHI_1,
    TINY_HUNYUANVIDEO,
    HUNYUANVIDEO,
)

# Image-to-video and Wan2.2. Defaults are the Wan team's published inference configs
# (Wan2.1 `wan/configs/wan_i2v_14B.py`; Wan2.2 `wan/configs/wan_ti2v_5B.py`, `wan_t2v_A14B.py`,
# `wan_i2v_A14B.py`: sample_steps, sample_guide_scale, sample_shift, sample_fps, frame_num) and the
# sizes their READMEs list. Wan2.2's guide scales are given as (low noise, high noise): the
# registry's `default_guidance` is the high-noise expert's (diffusers' `guidance_scale`) and
# `default_guidance_2` the low-noise expert's (`guidance_scale_2`).
_WAN_14B = dict(dim=5120, ffn_dim=13824, num_layers=40, heads=40)

WAN21_I2V_14B_480P = ModelSpec(
    name="wan2.1-i2v-14b-480p",
    family="wan",
    hub_id="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
    sizes=("832x480", "480x832"),
    default_size="832x480",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=40,
    default_guidance=5.0,
    default_fps=16,
    flow_shift=3.0,  # the Wan team's recommendation for 480p I2V (5.0 is their 720p default)
    max_prompt_chars=2000,
    description="Wan2.1 image-to-video, 14B parameters, 480p; CLIP image encoder.",
    footprint=wan21_footprint(**_WAN_14B, in_channels=36, image_dim=CLIP_DIM),
    image_input="required",
)

WAN21_I2V_14B_720P = ModelSpec(
    name="wan2.1-i2v-14b-720p",
    family="wan",
    hub_id="Wan-AI/Wan2.1-I2V-14B-720P-Diffusers",
    sizes=("1280x720", "720x1280"),
    default_size="1280x720",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=40,
    default_guidance=5.0,
    default_fps=16,
    flow_shift=5.0,
    max_prompt_chars=2000,
    description="Wan2.1 image-to-video, 14B parameters, 720p; CLIP image encoder.",
    footprint=wan21_footprint(**_WAN_14B, in_channels=36, image_dim=CLIP_DIM),
    image_input="required",
)

WAN22_TI2V_5B = ModelSpec(
    name="wan2.2-ti2v-5b",
    family="wan",
    hub_id="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    sizes=("1280x704", "704x1280"),
    default_size="1280x704",
    min_frames=5,
    max_frames=121,
    default_frames=121,
    default_steps=50,
    default_guidance=5.0,
    default_fps=24,
    flow_shift=5.0,
    max_prompt_chars=2000,
    description="Wan2.2 text- and image-to-video, 5B parameters, 720p at 24 fps; the Wan2.2 VAE (16x16x4).",
    footprint=wan21_footprint(
        dim=3072,
        ffn_dim=14336,
        num_layers=30,
        heads=24,
        in_channels=48,
        out_channels=48,
        vae_bytes=WAN22_VAE_FP32_BYTES,
        vae_spatial_factor=16,
        vae_decoder_channels=256 // 4,  # decoder_base_dim at half resolution (2x2 patches)
    ),
    image_input="optional",
    size_multiple=32,
)

WAN22_T2V_A14B = ModelSpec(
    name="wan2.2-t2v-a14b",
    family="wan",
    hub_id="Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    sizes=("1280x720", "720x1280", "832x480", "480x832"),
    default_size="1280x720",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=40,
    default_guidance=4.0,
    default_guidance_2=3.0,
    default_fps=16,
    flow_shift=12.0,
    max_prompt_chars=2000,
    description="Wan2.2 text-to-video, two 14B experts (high noise, low noise), 480p and 720p.",
    footprint=wan21_footprint(**_WAN_14B, experts=2),
    acceleration=UNCALIBRATED_FEATURES,
)

WAN22_I2V_A14B = ModelSpec(
    name="wan2.2-i2v-a14b",
    family="wan",
    hub_id="Wan-AI/Wan2.2-I2V-A14B-Diffusers",
    sizes=("1280x720", "720x1280", "832x480", "480x832"),
    default_size="1280x720",
    min_frames=5,
    max_frames=81,
    default_frames=81,
    default_steps=40,
    default_guidance=3.5,
    default_guidance_2=3.5,
    default_fps=16,
    flow_shift=5.0,
    max_prompt_chars=2000,
    description="Wan2.2 image-to-video, two 14B experts (high noise, low noise), 480p and 720p.",
    footprint=wan21_footprint(**_WAN_14B, in_channels=36, experts=2),
    image_input="required",
    acceleration=UNCALIBRATED_FEATURES,
)

# Tiny random-weight checkpoints of each new family (engine/models/tiny.py), for tests and CI.
_TINY_COMMON = dict(
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
    builtin=True,
)
TINY_WAN_I2V = ModelSpec(
    name="tiny-wan-i2v",
    description="Random-weight Wan2.1 I2V (CLIP encoder, 36-channel DiT); for tests and CI.",
    image_input="required",
    **_TINY_COMMON,  # type: ignore[arg-type]
)
TINY_WAN22_TI2V = ModelSpec(
    name="tiny-wan2.2-ti2v",
    description="Random-weight Wan2.2 TI2V (Wan2.2 VAE, 48 channels); for tests and CI.",
    image_input="optional",
    size_multiple=32,
    **_TINY_COMMON,  # type: ignore[arg-type]
)
TINY_WAN22_T2V_A14B = ModelSpec(
    name="tiny-wan2.2-t2v-a14b",
    description="Random-weight Wan2.2 two-expert text-to-video; for tests and CI.",
    default_guidance_2=3.0,
    acceleration=UNCALIBRATED_FEATURES,
    **_TINY_COMMON,  # type: ignore[arg-type]
)
TINY_WAN22_I2V_A14B = ModelSpec(
    name="tiny-wan2.2-i2v-a14b",
    description="Random-weight Wan2.2 two-expert image-to-video; for tests and CI.",
    default_guidance_2=4.0,
    image_input="required",
    acceleration=UNCALIBRATED_FEATURES,
    **_TINY_COMMON,  # type: ignore[arg-type]
)

_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        TINY_WAN,
        WAN21_T2V_1_3B,
        WAN21_T2V_14B,
        WAN21_I2V_14B_480P,
        WAN21_I2V_14B_720P,
        WAN22_TI2V_5B,
        WAN22_T2V_A14B,
        WAN22_I2V_A14B,
        TINY_WAN_I2V,
        TINY_WAN22_TI2V,
        TINY_WAN22_T2V_A14B,
        TINY_WAN22_I2V_A14B,
        *DIFFUSERS_SPECS,
    )
}


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
