"""vidq's diffusion inference engine, usable on its own (no import of the service side).

Importing `engine` is cheap: the registry is plain Python, and everything that needs torch
(`Engine`, the request types) is loaded on first attribute access, so the API can validate
requests through `engine.registry` without paying for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.registry import ModelSpec, UnknownModelError, get_spec, list_specs

if TYPE_CHECKING:
    from engine.engine import Engine
    from engine.request import GenerationRequest, GenerationResult, StepInfo

# name -> module that defines it; resolved by __getattr__ on first use.
_LAZY = {
    "Engine": "engine.engine",
    "GenerationRequest": "engine.request",
    "GenerationResult": "engine.request",
    "StepInfo": "engine.request",
}

__all__ = [
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "ModelSpec",
    "StepInfo",
    "UnknownModelError",
    "get_spec",
    "list_specs",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
