"""`Engine`: load a model once, keep it warm, generate videos on request."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from engine.acceleration.calibration import calibration_for
from engine.acceleration.fp8 import Fp8UnsupportedError, Fp8Weights, fp8_extra_bytes, fp8_support
from engine.attention import resolve_backend
from engine.checkpoint import Checkpointer
from engine.errors import coded_errors
from engine.lora.apply import LoraApplier
from engine.lora.cache import AdapterCache
from engine.lora.runtime import LoraLinear, install_runtime_slots
from engine.memory.diffusers_footprint import diffusers_footprint_from_folder
from engine.memory.diffusers_placement import place_pipeline
from engine.memory.footprint import footprint_from_folder
from engine.memory.offload import ComponentOffload, LayerwiseOffload
from engine.models.components import WanComponents, load_wan_components
from engine.models.diffusers_loading import diffusers_family_of, load_variants
from engine.models.locate import LocatedModel, locate_model
from engine.optimize import optimize_transformer, should_compile
from engine.optimize_diffusers import compile_repeated_blocks, fuse_projections, set_attention
from engine.parallel import ParallelConfig
from engine.parallel.state import initialize_parallel_state
from engine.pipelines.diffusers_backend import DiffusersPipeline
from engine.pipelines.diffusers_families import DiffusersFamily
from engine.pipelines.wan_t2v import WanT2VPipeline
from engine.stages.state import OnStage, OnStep
from spec.acceleration import UNCALIBRATED_FEATURES, check_acceleration, for_model
from spec.memory import GIB, MemoryPlan, ModelFootprint, RequestShape, plan_for_placement, plan_memory
from spec.registry import (
    MAX_GUIDANCE,
    MAX_STEPS,
    MIN_GUIDANCE,
    MIN_STEPS,
    ModelSpec,
    SpecViolationError,
)
from spec.request import GenerationRequest, GenerationResult
from spec.settings import EngineSettings
from spec.stages import Stage

# Share of the GPU's free memory the planner may use when no budget is given (the rest absorbs
# the CUDA context's growth and other processes' small allocations).
FREE_MEMORY_FRACTION = 0.95
# The request a placement is planned for when the model has no registry spec.
FALLBACK_SHAPE = RequestShape(width=832, height=480, num_frames=81, cfg=True)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on accelerators (what the checkpoints are trained in), float32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Engine:
    """One loaded text-to-video model on one device.

    `model` is a registry name (see `spec.registry`), a local diffusers-format folder, or a
    Hugging Face hub id. Wan checkpoints run on the native DiT; LTX-Video, CogVideoX, Mochi and
    HunyuanVideo checkpoints (model_index.json names their pipeline class) run on diffusers' own
    pipelines behind the same stages (`engine.pipelines.diffusers_backend`): same callbacks,
    cancel, memory plan, compile and attention settings. Everything is loaded in the constructor and stays resident, so
    `generate` pays only for the generation. Generations on one engine run one at a time (a
    lock serialises them): one engine per GPU, one GPU per process.

    `settings` (`spec.settings.EngineSettings`; a worker passes its service settings, which extend
    them) gives the models folder, device, attention backend, compile mode, memory and LoRA
    options; without it the defaults apply (the engine never reads the environment itself). The
    keyword arguments override single fields of it.

    `compile` ("auto", "on", "off") compiles the DiT's blocks; the
    first request of each shape pays the compile time (reported as the "compile" stage timing).

    `parallel` makes this engine one rank of a multi-process generation (see `engine.parallel`):
    every rank builds its Engine with the same config and calls `generate` with the same request.

    `dtype` applies to the DiT and the text encoder; the VAE always runs in float32.
    `attention_backend` is one of `engine.attention.BACKENDS`
    (default "auto"). A backend the device cannot run is rejected before anything is loaded.

    Memory (`engine.memory`): `offload` ("auto", "none", "model", "layerwise"), `vram_budget_gb`,
    `vae_tiling`, `text_encoder_on_cpu` and `resident_blocks` (the settings' `offload_resident_blocks`).
    Where the components live is planned once, before loading, for the largest request the
    model's spec allows (`self.placement`); each request then gets its own `MemoryPlan` (the VAE
    tiling may differ) from `plan(request)`, and one that cannot fit raises `MemoryBudgetError`
    before any work. The budget is `vram_budget_gb`, else 95% of the GPU's free memory at load
    time; on the CPU without a budget nothing is checked (an explicit offload mode still runs its
    machinery there, which is what the CPU tests exercise).
    """

    def __init__(
        self,
        model: str | Path,
        settings: EngineSettings | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        parallel: ParallelConfig | None = None,
        models_dir: Path | None = None,
        attention_backend: str | None = None,
        compile: str | None = None,
        offload: str | None = None,
        vram_budget_gb: float | None = None,
        vae_tiling: str | None = None,
        text_encoder_on_cpu: bool | None = None,
        resident_blocks: int | None = None,
        fp8_emulation: bool | None = None,
    ) -> None:
        overrides = {
            "models_dir": models_dir,
            "attention_backend": attention_backend,
            "compile": compile,
            "offload": offload,
            "vram_budget_gb": vram_budget_gb,
            "vae_tiling": vae_tiling,
            "text_encoder_on_cpu": text_encoder_on_cpu,
            "offload_resident_blocks": resident_blocks,
            "fp8_emulation": fp8_emulation,
        }
        base = settings if settings is not None else EngineSettings.defaults()
        settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        self.settings = settings
        if device is None and settings.device:
            device = settings.device
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or default_dtype(self.device)
        requested_backend = settings.attention_backend
        resolve_backend(requested_backend, self.device)  # fail fast, before minutes of loading

        located = locate_model(model, settings.resolved_models_dir)
        self.folder = located.folder
        self.model_id = located.model_id
        self.spec: ModelSpec | None = located.spec

        # Wan runs on the native pipeline; the families in `engine.pipelines.diffusers_families` run
        # their own diffusers pipelines behind the same stages (`engine.pipelines.diffusers_backend`).
        self.family: DiffusersFamily | None = diffusers_family_of(located.folder)

        # Plan before loading: a model that cannot fit is refused in milliseconds, not minutes.
        if self.family is not None:
            self.footprint: ModelFootprint = diffusers_footprint_from_folder(located.folder, self.dtype)
        else:
            self.footprint = footprint_from_folder(located.folder, self.dtype)
        self.memory_budget_bytes = self._budget_bytes(settings.vram_budget_gb)
        self.vae_tiling = settings.vae_tiling
        offload = settings.offload
        resident_blocks = settings.offload_resident_blocks
        if self.family is not None and offload in ("auto", "layerwise"):
            resident_blocks = 0  # diffusers' group offloading streams every block
        self.placement: MemoryPlan = plan_memory(
            self.footprint,
            self._largest_request(),
            self.memory_budget_bytes,
            offload=offload,
            vae_tiling=self.vae_tiling,
            text_encoder_on_cpu=settings.text_encoder_on_cpu,
            resident_blocks=resident_blocks,
        )
        self.compiled = should_compile(settings.compile, self.device)
        self.parallel = None
        # Fast modes (engine.acceleration) are native-Wan hooks; diffusers-backed families offer none.
        if self.spec is not None:
            self.acceleration: tuple[str, ...] = self.spec.acceleration
        else:
            # an unregistered Wan folder: no MagCache schedule exists for it
            self.acceleration = () if self.family is not None else UNCALIBRATED_FEATURES
        self.fp8_weights: Fp8Weights | None = None
        if self.family is not None:
            if parallel is not None and parallel.enabled:
                raise ValueError(f"{self.family.name} runs on one GPU (multi-GPU parallelism is native Wan only)")
            self.attention_backend = resolve_backend(requested_backend, self.device)
            self.pipeline: WanT2VPipeline | DiffusersPipeline = self._build_diffusers_pipeline(
                located.folder, fuse=settings.fuse_projections
            )
        else:
            self.pipeline = self._build_wan_pipeline(located, settings, requested_backend, parallel)
        self._lock = threading.Lock()

    def _build_wan_pipeline(
        self, located: LocatedModel, settings: EngineSettings, requested_backend: str, parallel: ParallelConfig | None
    ) -> WanT2VPipeline:
        """Load a Wan checkpoint onto the native DiT and place it as `self.placement` says."""
        everything_resident = self.placement.offload == "none" and self.placement.text_encoder == "resident"
        load_device = self.device if everything_resident else torch.device("cpu")
        with coded_errors():
            self.components = load_wan_components(located.folder, load_device, self.dtype)
            experts = self.components.transformers
            if settings.fuse_projections:
                for expert in experts:
                    expert.fuse_projections()  # before placement: offload keeps fused weights
            self.lora_mode = self._lora_mode(settings.lora_mode)
            if self.lora_mode == "runtime" and settings.lora_runtime_rank > 0:  # before placement: slots travel
                for expert in experts:
                    install_runtime_slots(expert, settings.lora_runtime_rank)
            self._offloads = self._place(self.components)
        # One applier per expert, over the same machinery: each keeps its own expert's originals
        # (the spare GPU memory for them is shared out evenly).
        self.loras = [
            LoraApplier(
                expert,
                self.device,
                host_view=self._host_view,
                device_backup_bytes=self._spare_device_bytes() // len(experts),
            )
            for expert in experts
        ]
        self.adapters = AdapterCache(settings.lora_cache_mb * 2**20)
        for expert in experts:
            self.attention_backend = expert.set_attention_backend(requested_backend)
        if parallel is not None and parallel.enabled:
            # One rank of a multi-process job: torch.distributed is up (engine.parallel.launch).
            parallel.check_heads(self.components.transformer.config.num_attention_heads)
            self.parallel = initialize_parallel_state(parallel)
            for expert in experts:
                expert.sequence_parallel = True
        for expert in experts:
            optimize_transformer(expert, fuse=settings.fuse_projections, compile=self.compiled)
        overrides = {"flow_shift": self.spec.flow_shift} if self.spec is not None else {}
        text_encoder_device = torch.device("cpu") if self.placement.text_encoder == "cpu" else self.device
        pipeline = WanT2VPipeline(
            self.components,
            self.device,
            self.model_id,
            overrides,
            text_encoder_device=text_encoder_device,
            calibration=calibration_for(self.spec.name if self.spec is not None else None),
        )
        if "dit" in self._offloads:
            pipeline.stage(Stage.DENOISING).around.append(self._offloads["dit"].on_device)
        if "experts" in self._offloads:  # the idle expert waits in pinned host memory
            swaps = self._offloads["experts"]
            pipeline.stage(Stage.DENOISING).expert_swap = lambda index: swaps[index].on_device()
        if "vae" in self._offloads:
            pipeline.stage(Stage.DECODING).around.append(self._offloads["vae"].on_device)
            if Stage.IMAGE_CONDITIONING in [stage.name for stage in pipeline.stages]:
                pipeline.stage(Stage.IMAGE_CONDITIONING).around.append(self._offloads["vae"].on_device)
        return pipeline

    def _build_diffusers_pipeline(self, folder: Path, *, fuse: bool) -> DiffusersPipeline:
        """Load the family's diffusers pipeline(s), place them, and apply the speed settings."""
        assert self.family is not None
        with coded_errors():
            variants = load_variants(folder, self.family, self.dtype)
        pipe = next(iter(variants.values()))
        takes_image = self.family.image_to_video in variants
        if fuse:
            fuse_projections(pipe.transformer, self.family)  # before placement: offload moves the weights
        around = place_pipeline(pipe, self.placement, self.device, vae_in_denoising=takes_image)
        around_loop = set_attention(pipe.transformer, self.family, self.attention_backend)
        if self.compiled:
            compile_repeated_blocks(pipe.transformer, self.family.repeated_blocks)
        encoder_device = torch.device("cpu") if self.placement.text_encoder == "cpu" else self.device
        pipeline = DiffusersPipeline(
            self.family,
            variants,
            self.device,
            around_loop=around_loop,
            text_encoder_device=encoder_device,
            warm_up=self.compiled,
        )
        for stage_name, factories in around.items():
            pipeline.stage(stage_name).around.extend(factories)
        return pipeline

    def _lora_mode(self, setting: str) -> str:
        """How adapters are applied on this engine (see `engine.lora.apply`): "auto" fuses them
        (free per step; a switch costs a copy of the changed weights on the GPU) unless the DiT is
        offloaded, where a fused switch would rewrite its host copy over PCIe, so low-rank slots
        that ride along with each block are cheaper."""
        if setting != "auto":
            return setting
        return "fused" if self.placement.offload == "none" else "runtime"

    def _spare_device_bytes(self) -> int:
        """GPU memory the placement leaves unused even for the largest request: where fused LoRA
        keeps the original weights (so restoring them is a device-side copy)."""
        plan = self.placement
        if plan.budget_bytes is None or plan.offload != "none":
            return 0
        return max(0, plan.budget_bytes - plan.estimated_peak_bytes)

    def _host_view(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """Where an offloaded DiT tensor's values live between uses (None: on the device): in
        the layer-wise groups or the whole-model copy of either expert (a swapped expert's
        weights live in its pinned host copy)."""
        offloads = [self._offloads.get(key) for key in ("dit_blocks", "dit_blocks_2", "dit")]
        offloads += self._offloads.get("experts", [])
        for offload in offloads:
            view = offload.host_view(tensor) if offload is not None else None
            if view is not None:
                return view
        return None

    def apply_loras(self, request: GenerationRequest) -> tuple[str | None, float]:
        """Make the request's adapters (exactly those) active on each expert; -> (mode used,
        seconds it took). Each expert gets the adapters whose `LoraRef.expert` names it or none.

        Adapters come from the in-memory cache, read from their path on a miss. The same set as
        the last request costs nothing; none restores the base weights bit for bit. The mode is
        the experts' common one ("fused", "runtime"), or both joined by "+" when the runtime slots
        of one expert could not hold its adapters.
        """
        started = time.perf_counter()
        modes: list[str] = []
        for index, applier in enumerate(self.loras):
            refs = [ref for ref in request.loras if ref.applies_to(index)]
            mode = applier.apply([(self.adapters.get(ref.key, ref.path), ref.scale) for ref in refs], self.lora_mode)
            if mode is not None and mode not in modes:
                modes.append(mode)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return "+".join(modes) or None, time.perf_counter() - started

    @property
    def warm_adapters(self) -> list[str]:
        """Keys of the adapters held in memory (a worker publishes them for the dispatcher)."""
        return self.adapters.keys() if self.family is None else []

    def _budget_bytes(self, budget_gb: float | None) -> int | None:
        if budget_gb is not None:
            return int(budget_gb * GIB)
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free * FREE_MEMORY_FRACTION)
        return None

    def _largest_request(self) -> RequestShape:
        """The request the placement must hold: the spec's largest size and frame count, with CFG."""
        if self.spec is None:
            return FALLBACK_SHAPE
        width, height = max(
            (tuple(int(v) for v in size.split("x")) for size in self.spec.sizes), key=lambda wh: wh[0] * wh[1]
        )
        return RequestShape(width=width, height=height, num_frames=self.spec.max_frames, cfg=True)

    def _place(self, components: WanComponents) -> dict[str, Any]:
        """Put each component where `self.placement` says; returns the offload objects by component."""
        placement, device = self.placement, self.device
        offloads: dict[str, Any] = {}
        experts = components.transformers
        if placement.offload == "layerwise":
            for transformer in experts:
                blocks = transformer.blocks
                transformer.blocks = torch.nn.ModuleList()  # move everything but the blocks
                transformer.to(device)
                transformer.blocks = blocks
                key = "dit_blocks" if transformer is components.transformer else "dit_blocks_2"
                offloads[key] = LayerwiseOffload(blocks, device, resident_blocks=placement.resident_blocks)
        elif (len(experts) > 1 and placement.offload == "model") or placement.experts == "swap":
            # One expert on the GPU at a time, loaded when its first step comes (`expert_swap`).
            offloads["experts"] = [ComponentOffload(transformer, device) for transformer in experts]
        elif placement.offload == "model":
            offloads["dit"] = ComponentOffload(components.transformer, device)
        else:
            for transformer in experts:
                transformer.to(device)
        if placement.text_encoder == "offload":
            offloads["text_encoder"] = ComponentOffload(components.text_encoder, device).attach_to_forward()
        elif placement.text_encoder == "resident":
            components.text_encoder.to(device)
        if components.image_encoder is not None:  # placed like the text encoder (used as rarely)
            if placement.text_encoder == "offload":
                offloads["image_encoder"] = ComponentOffload(components.image_encoder, device).attach_to_forward()
            elif placement.text_encoder == "resident":
                components.image_encoder.to(device)
        if placement.vae == "offload":
            offloads["vae"] = ComponentOffload(components.vae, device)
        else:
            components.vae.to(device)
        return offloads

    def fp8_unavailable_reason(self) -> str | None:
        """None when this engine can run FP8 requests, else why not (before any weight is made)."""
        if "fp8" not in self.acceleration:
            return "this model does not offer FP8"
        reason = fp8_support(self.device, emulate=self.settings.fp8_emulation)
        if reason is not None:
            return reason
        if self.placement.offload != "none":
            return f"FP8 needs the DiT resident on the GPU; this engine offloads it ({self.placement.offload})"
        if self.placement.experts == "swap":
            return "FP8 needs both experts resident on the GPU; this engine swaps them (experts placement: swap)"
        experts = self.components.transformers
        if any(isinstance(m, LoraLinear) for expert in experts for m in expert.blocks.modules()):
            return "FP8 and runtime LoRA slots do not combine (VIDQ_LORA_MODE=runtime)"
        budget = self.placement.budget_bytes
        extra = fp8_extra_bytes(*experts)  # every expert's copies stay on the GPU
        if budget is not None and self.placement.estimated_peak_bytes + extra > budget:
            return (
                f"the FP8 weights ({extra / GIB:.1f} GiB) do not fit beside the bf16 ones "
                f"(estimated peak {self.placement.estimated_peak_bytes / GIB:.1f} GiB, budget {budget / GIB:.1f} GiB)"
            )
        return None

    def _prepare_fp8(self) -> None:
        """Quantize the blocks' linears of every expert once (first FP8 request); raise when FP8
        cannot run here."""
        if self.fp8_weights is not None:
            return
        reason = self.fp8_unavailable_reason()
        if reason is not None:
            raise Fp8UnsupportedError(reason)
        emulate = self.device.type != "cuda"
        self.fp8_weights = Fp8Weights(*self.components.transformers, emulate=emulate)
        self.pipeline.stage("denoising").fp8 = self.fp8_weights

    def plan(self, request: GenerationRequest) -> MemoryPlan:
        """The memory plan for `request` under this engine's placement; raises `MemoryBudgetError`
        (a ValueError naming the budget and the estimate) when it cannot fit. Pure arithmetic."""
        return plan_for_placement(self.placement, self.footprint, RequestShape.of(request), vae_tiling=self.vae_tiling)

    def check_request(self, request: GenerationRequest) -> None:
        """Raise `SpecViolationError` for a request this model cannot run, before any work.

        With a registry spec its rules apply (sizes, frame range, ...); for unregistered folders,
        only what the architecture itself needs. Fast modes must be ones the model offers.
        """
        if self.family is not None and request.loras:
            raise SpecViolationError("loras", f"LoRA adapters are served for Wan models only, not {self.family.name}")
        experts = 1 if self.family is not None else len(self.components.transformers)
        for ref in request.loras:
            if ref.expert is not None and not 0 <= ref.expert < experts:
                raise SpecViolationError(
                    "loras", f"adapter {ref.key} is for expert {ref.expert}; this model has {experts} transformer(s)"
                )
        acceleration = for_model(request.acceleration, self.acceleration)  # "fast" means this model's
        check_acceleration(acceleration, supported=self.acceleration, num_inference_steps=request.num_inference_steps)
        if acceleration.fp8 and request.loras:
            raise Fp8UnsupportedError("FP8 weights are quantized from the base weights: they cannot carry LoRAs")
        if self.spec is not None:
            self.spec.validate_request(request)
            return
        # The VAE's compression (x the patch) sets the size multiple and the frame rule: 16 and 4k+1 for Wan.
        footprint = self.footprint
        size_multiple = footprint.vae_spatial_factor * footprint.patch_size[1]
        frame_step = footprint.vae_temporal_factor
        if request.width <= 0 or request.height <= 0 or request.width % size_multiple or request.height % size_multiple:
            raise SpecViolationError("size", f"width and height must be positive multiples of {size_multiple}")
        if request.num_frames < 1 or (request.num_frames - 1) % frame_step:
            raise SpecViolationError("num_frames", f"num_frames must be {frame_step}k+1")
        if not MIN_STEPS <= request.num_inference_steps <= MAX_STEPS:
            raise SpecViolationError("num_inference_steps", f"steps must be in [{MIN_STEPS}, {MAX_STEPS}]")
        if not MIN_GUIDANCE <= request.guidance_scale <= MAX_GUIDANCE:
            raise SpecViolationError("guidance_scale", f"guidance must be in [{MIN_GUIDANCE}, {MAX_GUIDANCE}]")
        if request.fps < 1:
            raise SpecViolationError("fps", "fps must be positive")
        if self.family is None:  # an unregistered Wan folder: what its components take
            components = self.components
            if request.image is not None and not components.image_conditioned:
                raise SpecViolationError("input_reference", "this is a text-to-video model: it takes no image")
            if request.image is None and components.image_conditioned and not components.expand_timesteps:
                raise SpecViolationError("input_reference", "this is an image-to-video model: an image is required")

    def generate(
        self,
        request: GenerationRequest,
        on_step: OnStep | None = None,
        on_stage: OnStage | None = None,
        *,
        output_path: Path | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> GenerationResult:
        """Run one generation; blocks until done.

        `on_step(StepInfo)` is called after every denoising step and `on_stage(name)` when each of
        "text_encoding", "denoising", "decoding" (and "encoding", only with `output_path`) starts.
        An exception raised by either callback stops the generation and propagates (how a
        caller cancels). A request over the memory budget raises `MemoryBudgetError` first; the
        plan used is `result.memory_plan`. With `output_path`, the mp4 is written there and a JPEG
        thumbnail beside it (same name, .jpg).

        `checkpointer` (see `engine.checkpoint`) saves the denoising state when it says one is due
        and resumes from its last checkpoint; `result.resumed_from_step` tells whether it did. Only
        a single-process engine takes one (the ranks of a parallel run would have to restore in
        lockstep).
        """
        request = replace(request, acceleration=for_model(request.acceleration, self.acceleration))
        self.check_request(request)
        if checkpointer is not None and self.parallel is not None:
            raise ValueError("denoising checkpoints need a single-process engine, not one rank of a group")
        if request.guidance_scale_2 is None and self.spec is not None and self.spec.default_guidance_2 is not None:
            request = replace(request, guidance_scale_2=self.spec.default_guidance_2)
        memory_plan = self.plan(request)
        with self._lock, coded_errors():
            # Adapters first: an FP8 request carries none, so the base weights are back before FP8
            # copies are quantized from them.
            lora_mode, lora_s = self.apply_loras(request) if self.family is None else (None, 0.0)
            if request.acceleration.fp8:
                self._prepare_fp8()
            result = self.pipeline(
                request,
                on_step=on_step,
                on_stage=on_stage,
                output_path=output_path,
                memory_plan=memory_plan,
                checkpointer=checkpointer,
            )
        if request.loras:
            result.stage_timings_s["lora"] = lora_s
        result.lora_mode = lora_mode
        return result
