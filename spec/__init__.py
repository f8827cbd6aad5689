"""Facts about models and requests that the service and the engine share, with no torch.

- `spec.registry`: every model and every per-model fact (sizes, frame rules, defaults, family,
  memory footprint, whether it is built in and when it counts as installed);
- `spec.request`: what a caller asks the engine for and what it gets back;
- `spec.memory`: the memory planner's arithmetic (does a request fit N GiB, and how);
- `spec.stages`: the names of a job's stages, in order, and their share of the progress bar;
- `spec.routing`: which queue a job goes to;
- `spec.lora_keys`: which LoRA file key changes which weight (the API checks uploads with it);
- `spec.settings`: the engine's settings, which the service's settings extend.

`jobs` and `engine` both import it; it imports neither (an import-linter contract checks this).
Standard library and pydantic only, so `pip install .` (no torch) can validate and plan requests.
"""
