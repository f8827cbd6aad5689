"""Fast modes, chosen per request: step caching (TeaCache, MagCache, first-block cache) and FP8
linears. `options` and `calibration` are plain Python (the API validates with them);
`step_cache` and `fp8` need torch and are imported by the engine only."""

from spec.acceleration import (
    ACCELERATION_FEATURES,
    CACHE_METHODS,
    LOSSLESS,
    PRESETS,
    AccelerationError,
    AccelerationOptions,
    check_acceleration,
    parse_acceleration,
    resolve_acceleration,
)

__all__ = [
    "ACCELERATION_FEATURES",
    "CACHE_METHODS",
    "LOSSLESS",
    "PRESETS",
    "AccelerationError",
    "AccelerationOptions",
    "check_acceleration",
    "parse_acceleration",
    "resolve_acceleration",
]
