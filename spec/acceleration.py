"""Per-request fast modes (run by `engine.acceleration`): what a request may ask for, the named
presets, and their validation.

Plain Python (no torch), so the API validates an `acceleration` field with the same code the
engine uses. A request asks for one of:

- `"none"` (the default): the lossless path, bit for bit today's output;
- a preset name (`PRESETS`): "balanced" or "fast", resolved per model (`preset_options`): the
  MagCache presets where the model has a calibrated schedule, else `UNCALIBRATED_PRESETS`;
- explicit options, a mapping with any of `AccelerationOptions`' fields (optionally `preset`, whose
  values the other fields then override).

Every error names the field it is about (`acceleration`, `acceleration.threshold`, ...), so the
API can answer a 422 with `param` set.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from spec.errors import CodedError

# What a skipped step reuses: the whole block stack's residual (teacache, magcache), or every block
# after the first (fbcache: the first block always runs and decides).
CACHE_METHODS: tuple[str, ...] = ("teacache", "magcache", "fbcache")
# Everything a model can declare support for in its registry spec.
ACCELERATION_FEATURES: tuple[str, ...] = (*CACHE_METHODS, "fp8")
# What a native Wan model offers without a MagCache calibration (MagCache follows a per-model
# schedule of residual magnitudes; TeaCache then runs on the raw change, the first-block cache on
# the run's own activations): Wan2.2 A14B and unregistered folders.
UNCALIBRATED_FEATURES: tuple[str, ...] = ("teacache", "fbcache", "fp8")
NONE = "none"
MAX_THRESHOLD = 10.0


class AccelerationError(CodedError, ValueError):
    """An acceleration request this model or engine cannot honour; `param` names the field."""

    code = "invalid_request"

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message, param=param)


@dataclass(frozen=True)
class AccelerationOptions:
    """How one request trades fidelity for speed. The default is lossless.

    `cache`: None or one of `CACHE_METHODS`. `threshold`: the method's skip threshold (0 never
    skips: the output is the uncached one exactly). `warmup_steps` / `final_steps`: steps at the
    start and end that are always computed. `max_consecutive_skips`: a skip run never gets longer.
    `fp8`: the DiT blocks' linear layers run as FP8 GEMMs (Hopper; emulated on the CPU in tests).
    `skip_steps`: a forced schedule (0-based step indices) that replaces the method's decisions,
    for tests and benchmarks; warm-up, final steps and the skip limit do not apply to it.
    `preset`: the preset these options came from, if any (recorded on the job).
    """

    cache: str | None = None
    threshold: float = 0.0
    warmup_steps: int = 1
    final_steps: int = 1
    max_consecutive_skips: int = 3
    fp8: bool = False
    skip_steps: tuple[int, ...] | None = None
    preset: str | None = None

    @property
    def lossless(self) -> bool:
        return self.cache is None and not self.fp8

    @property
    def features(self) -> tuple[str, ...]:
        """The registry features these options need (what a model must support)."""
        return tuple(f for f in ((self.cache,) + (("fp8",) if self.fp8 else ())) if f is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        record = asdict(self)
        if self.skip_steps is not None:
            record["skip_steps"] = list(self.skip_steps)
        return record

    def describe(self) -> str:
        if self.lossless:
            return NONE
        parts = [self.preset] if self.preset else []
        if self.cache:
            parts.append(f"{self.cache}(threshold={self.threshold:g}, max skips {self.max_consecutive_skips})")
        if self.fp8:
            parts.append("fp8")
        return " ".join(parts)


LOSSLESS = AccelerationOptions()

# MagCache's skip decisions come from a calibrated schedule of residual magnitudes, not from the
# run's content, so a preset skips the same steps with random and with real weights; its
# measured speed-up (benchmarks/bench_fast.py) therefore carries over to real checkpoints.
PRESETS: dict[str, AccelerationOptions] = {
    NONE: LOSSLESS,
    # Published MagCache setting for Wan2.1 (threshold 0.12, K = 2), a short warm-up.
    "balanced": AccelerationOptions(
        cache="magcache", threshold=0.12, warmup_steps=4, final_steps=1, max_consecutive_skips=2, preset="balanced"
    ),
    # Twice the error budget, runs of up to four skips, and FP8 linears where the GPU has them.
    "fast": AccelerationOptions(
        cache="magcache",
        threshold=0.24,
        warmup_steps=2,
        final_steps=1,
        max_consecutive_skips=4,
        fp8=True,
        preset="fast",
    ),
}

# The same presets for models that offer no MagCache (no calibrated schedule exists for them, e.g.
# Wan2.2 A14B's two experts): the first-block cache, which decides from the run's own activations
# and so needs no calibration. Thresholds: diffusers' FirstBlockCache default (0.05) for
# "balanced", twice that for "fast". Unlike MagCache its decisions depend on the content, so the
# speed-up on random weights (CPU tests, benchmarks) says little about real checkpoints.
UNCALIBRATED_PRESETS: dict[str, AccelerationOptions] = {
    "balanced": AccelerationOptions(
        cache="fbcache", threshold=0.05, warmup_steps=4, final_steps=1, max_consecutive_skips=2, preset="balanced"
    ),
    "fast": AccelerationOptions(
        cache="fbcache",
        threshold=0.1,
        warmup_steps=2,
        final_steps=1,
        max_consecutive_skips=4,
        fp8=True,
        preset="fast",
    ),
}


def preset_options(name: str, supported: Collection[str] | None = None) -> AccelerationOptions:
    """Preset `name` for a model offering the features `supported` (None: not known yet, the
    MagCache variant). A model without MagCache gets the first-block-cache variant, so every preset
    resolves to something the model runs; one without that either gets the MagCache variant and
    `check_acceleration` says what is missing."""
    options = PRESETS[name]
    if supported is None or all(feature in supported for feature in options.features):
        return options
    fallback = UNCALIBRATED_PRESETS.get(name)
    if fallback is not None and all(feature in supported for feature in fallback.features):
        return fallback
    return options


def for_model(options: AccelerationOptions, supported: Collection[str]) -> AccelerationOptions:
    """Options parsed before the model was known (`GenerationRequest` normalises "fast" on its
    own) made the model's: an unmodified preset becomes that preset's variant for this model;
    anything else is returned as it is."""
    if options.preset is not None and options == PRESETS.get(options.preset):
        return preset_options(options.preset, supported)
    return options


_FIELDS = {f.name for f in fields(AccelerationOptions)}


def _int_field(raw: Mapping[str, Any], name: str, minimum: int) -> int | None:
    if name not in raw:
        return None
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AccelerationError(f"acceleration.{name}", f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def parse_acceleration(value: object, supported: Collection[str] | None = None) -> AccelerationOptions:
    """A preset name, a mapping of options, options themselves or None -> `AccelerationOptions`.

    Presets resolve for a model offering `supported` (`preset_options`; None: the MagCache
    variant). Checks each field on its own; what depends on the model or the request (supported
    features, step indices) is `check_acceleration`'s job.
    """
    if value is None:
        return LOSSLESS
    if isinstance(value, AccelerationOptions):
        return value if supported is None else for_model(value, supported)
    if isinstance(value, str):
        if value not in PRESETS:
            raise AccelerationError(
                "acceleration", f"unknown acceleration preset {value!r}; one of {', '.join(PRESETS)} or an object"
            )
        return preset_options(value, supported)
    if not isinstance(value, Mapping):
        raise AccelerationError("acceleration", "acceleration must be a preset name or an object of options")
    unknown = sorted(set(value) - _FIELDS)
    if unknown:
        raise AccelerationError(f"acceleration.{unknown[0]}", f"unknown acceleration option {unknown[0]!r}")

    base = LOSSLESS
    if value.get("preset") is not None:
        if not isinstance(value["preset"], str) or value["preset"] not in PRESETS:
            raise AccelerationError("acceleration.preset", f"preset must be one of {', '.join(PRESETS)}")
        base = preset_options(value["preset"], supported)
    changes: dict[str, Any] = {}
    if "cache" in value:
        cache = value["cache"]
        if cache in (None, NONE):
            changes["cache"] = None
        elif cache not in CACHE_METHODS:
            raise AccelerationError(
                "acceleration.cache", f"cache must be one of {', '.join(CACHE_METHODS)} or null, got {cache!r}"
            )
        else:
            changes["cache"] = cache
    if "threshold" in value:
        threshold = value["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= MAX_THRESHOLD:
            raise AccelerationError(
                "acceleration.threshold", f"threshold must be a number in [0, {MAX_THRESHOLD:g}], got {threshold!r}"
            )
        changes["threshold"] = float(threshold)
    for name, minimum in (("warmup_steps", 1), ("final_steps", 0), ("max_consecutive_skips", 1)):
        parsed = _int_field(value, name, minimum)
        if parsed is not None:
            changes[name] = parsed
    if "fp8" in value:
        if not isinstance(value["fp8"], bool):
            raise AccelerationError("acceleration.fp8", f"fp8 must be true or false, got {value['fp8']!r}")
        changes["fp8"] = value["fp8"]
    if value.get("skip_steps") is not None:
        steps = value["skip_steps"]
        if not isinstance(steps, list | tuple) or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in steps
        ):
            raise AccelerationError("acceleration.skip_steps", "skip_steps must be a list of step indices")
        changes["skip_steps"] = tuple(sorted(set(steps)))
    return replace(base, **changes)


def acceleration_argument(text: str) -> str | dict[str, Any]:
    """A command-line `--acceleration` value: a preset name, or a JSON object of options."""
    import json

    if not text.lstrip().startswith("{"):
        return text
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AccelerationError("acceleration", f"--acceleration is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AccelerationError("acceleration", "--acceleration must be a preset name or a JSON object")
    return value


def summarize_acceleration(result: Mapping[str, Any] | None) -> str:
    """One line for people: what the fast modes did (`GenerationResult.acceleration`)."""
    if not result:
        return "acceleration: none"
    total = result["steps_computed"] + result["steps_skipped"]
    return (
        f"acceleration: {result.get('preset') or 'none'}; {result['steps_computed']}/{total} steps computed, "
        f"{result['steps_skipped']} skipped; precision {result['precision']}"
    )


def check_acceleration(options: AccelerationOptions, *, supported: Collection[str], num_inference_steps: int) -> None:
    """Raise `AccelerationError` for options this model (its `supported` features) or request cannot run."""
    for feature in options.features:
        if feature not in supported:
            param = "acceleration.fp8" if feature == "fp8" else "acceleration.cache"
            offered = ", ".join(supported) or "none"
            raise AccelerationError(param, f"this model does not support {feature}; it supports: {offered}")
    if options.skip_steps is not None:
        if options.cache is None:
            raise AccelerationError("acceleration.skip_steps", "skip_steps needs a cache method (what a skip reuses)")
        bad = [s for s in options.skip_steps if not 1 <= s < num_inference_steps]
        if bad:
            raise AccelerationError(
                "acceleration.skip_steps",
                f"skip_steps must be in [1, {num_inference_steps - 1}] (step 0 fills the cache), got {bad}",
            )


def resolve_acceleration(value: object, *, supported: Collection[str], num_inference_steps: int) -> AccelerationOptions:
    """`parse_acceleration` (presets resolved for this model) then `check_acceleration`: what the
    API and the engine call."""
    options = parse_acceleration(value, supported)
    check_acceleration(options, supported=supported, num_inference_steps=num_inference_steps)
    return options
