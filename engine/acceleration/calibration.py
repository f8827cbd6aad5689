"""Published step-cache calibrations of the Wan2.1 text-to-video models, by registry name.

Plain data (no torch). Models absent from a table run that method uncalibrated where it still
makes sense (TeaCache on the raw relative change) and not at all where it does not (MagCache has
no schedule to follow): the registry spec declares which methods each model supports.
"""

from __future__ import annotations

from dataclasses import dataclass

# TeaCache's rescaling polynomials (highest power first) for the relative L1 change of the
# timestep projection `timestep_proj` ("e0", [B, 6, C]) between steps: the "use_ret_steps" variant
# of ali-vilab/TeaCache, TeaCache4Wan2.1/teacache_generate.py, the same numbers as DiffSynth-Studio's
# `TeaCache.coefficients_dict` ("Wan2.1-T2V-1.3B", "Wan2.1-T2V-14B"). That variant always computes
# its first steps (our `warmup_steps`).
TEACACHE_COEFFICIENTS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": (-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02),
    "wan2.1-t2v-14b": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
}

# MagCache's magnitude ratios ||r_t|| / ||r_{t-1}|| of the block stack's residual, calibrated at 50
# UniPC steps: Zehong-Ma/MagCache, MagCache4Wan2.1/magcache_generate.py (`mag_ratios` for
# 'T2V-1.3B' and 'T2V-14B'; cond and uncond are interleaved there and differ in the fourth digit,
# so the conditional entries are kept: one batched-CFG decision uses one schedule). Entry 0 is the
# padding 1.0 of the first step, which has no predecessor.
_MAG_RATIOS_13B = (
    1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511, 0.99535,
    0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396, 0.99388, 0.99349,
    0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849, 0.98758, 0.98644, 0.98504,
    0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593, 0.95086, 0.94013, 0.92402, 0.90241,
    0.86821, 0.81838,
)  # fmt: skip
_MAG_RATIOS_14B = (
    1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533, 0.99468,
    0.99438, 0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418, 0.99271, 0.99313, 0.99215,
    0.99218, 0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887, 0.98772, 0.98767, 0.98573, 0.98501, 0.9838,
    0.98177, 0.98037, 0.97678, 0.97546, 0.97184, 0.96711, 0.96349, 0.95629, 0.94926, 0.93964, 0.92511, 0.90693,
    0.8796, 0.86111,
)  # fmt: skip
MAGCACHE_RATIOS: dict[str, tuple[float, ...]] = {
    "wan2.1-t2v-1.3b": _MAG_RATIOS_13B,
    "wan2.1-t2v-14b": _MAG_RATIOS_14B,
    # tiny-wan (random weights, for tests and CI) borrows the 1.3B schedule so that MagCache and
    # the presets that use it run through the whole service on the CPU.
    "tiny-wan": _MAG_RATIOS_13B,
}


@dataclass(frozen=True)
class StepCacheCalibration:
    """What the step caches know about one model: None where nothing was published."""

    teacache_coefficients: tuple[float, ...] | None = None
    magcache_ratios: tuple[float, ...] | None = None


def calibration_for(model_name: str | None) -> StepCacheCalibration:
    if model_name is None:
        return StepCacheCalibration()
    return StepCacheCalibration(
        teacache_coefficients=TEACACHE_COEFFICIENTS.get(model_name),
        magcache_ratios=MAGCACHE_RATIOS.get(model_name),
    )


def magcache_schedule(ratios: tuple[float, ...], num_steps: int) -> list[float]:
    """The calibrated ratios stretched to `num_steps` by nearest-index lookup (MagCache's own
    `nearest_interp`), so a 50-step calibration serves any step count."""
    if num_steps == 1:
        return [ratios[-1]]
    scale = (len(ratios) - 1) / (num_steps - 1)
    return [ratios[round(i * scale)] for i in range(num_steps)]
