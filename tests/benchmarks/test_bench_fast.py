"""bench_fast.py's results file: a partial rerun replaces only what it produced."""

from __future__ import annotations

from benchmarks.bench_fast import merged, spread_schedule


def test_a_partial_run_replaces_only_its_rows_and_sections() -> None:
    previous = {
        "bench": "fast_mode",
        "commit": "old",
        "settings": {"num_frames": 81},
        "presets": [{"preset": "balanced", "speedup": 2.2}, {"preset": "fast", "speedup": 3.4}],
        "skip_budgets": [
            {"cache": "teacache", "skip_budget": 0.3, "speedup": 9.0},
            {"cache": "magcache", "skip_budget": 0.3, "speedup": 1.4},
            {"cache": "teacache", "skip_budget": 0.5, "speedup": 9.0},
        ],
        "fp8_noise_floor": {"fp8_vs_bf16_rel_err": 0.0185},
        "fp8_per_step": {"speedup": 1.15},
    }
    results = {
        "bench": "fast_mode",
        "commit": "new",
        "settings": {"num_frames": 81, "budget_num_frames": 21},
        "skip_budgets": [
            {"cache": "teacache", "skip_budget": 0.3, "speedup": 1.3},
            {"cache": "teacache", "skip_budget": 0.5, "speedup": 1.8},
        ],
        "fp8_latent_error": {"fp8_latent_rel_err": 0.03},
    }
    out = merged(previous, results, {"commit": "new", "argv": ["--presets", ""]})

    assert out["commit"] == "old" and out["settings"] == previous["settings"]
    assert out["presets"] == previous["presets"]
    assert out["skip_budgets"] == [  # replaced in place, the others kept
        {"cache": "teacache", "skip_budget": 0.3, "speedup": 1.3},
        {"cache": "magcache", "skip_budget": 0.3, "speedup": 1.4},
        {"cache": "teacache", "skip_budget": 0.5, "speedup": 1.8},
    ]
    assert out["fp8_noise_floor"] == previous["fp8_noise_floor"]
    assert out["fp8_per_step"] == previous["fp8_per_step"]
    assert out["fp8_latent_error"] == {"fp8_latent_rel_err": 0.03}
    assert out["updates"] == [
        {
            "commit": "new",
            "argv": ["--presets", ""],
            "replaced": ["skip_budgets/teacache@0.3", "skip_budgets/teacache@0.5", "fp8_latent_error"],
        }
    ]
    assert merged({}, results, {"commit": "new"}) is results  # no file yet: the run's own results


def test_a_forced_budget_schedule_leaves_out_the_expert_switch() -> None:
    assert spread_schedule(8, 0.5) == [2, 3, 4, 5]  # one expert: evenly between warm-up and the last step
    assert spread_schedule(8, 0.5, [3]) == [2, 4, 5, 6]  # the switch (always computed) is never planned
