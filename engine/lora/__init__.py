"""LoRA adapters on the Wan DiT: every key format, applied fused or at runtime, never reloading.

- `spec.lora_keys`: which file key changes which weight, for every format (no torch: the API
  checks uploads with it, so this package imports nothing at its top);
- `engine.lora.adapter`: a file turned into factors and deltas;
- `engine.lora.apply`: switching the active set on a loaded model, exactly reversible;
- `engine.lora.runtime`: the fixed-rank slots of the runtime mode;
- `engine.lora.cache`: converted adapters kept in memory between jobs;
- `engine.lora.synthetic`: random adapters in each format, for tests and benchmarks.
"""
