"""vidq's diffusion inference engine, usable on its own (no import of the service side).

Importing `engine` is cheap: the registry and the request types live in the torch-free `spec`
package (shared with the service), and `Engine`, which needs torch, is loaded on first attribute
access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from spec.registry import ModelSpec, UnknownModelError, get_spec, list_specs
from spec.request import GenerationRequest, GenerationResult, StepInfo

if TYPE_CHECKING:
    from engine.engine import Engine

# name -> module that defines it; resolved by __getattr__ on first use.
_LAZY = {"Engine": "engine.engine"}

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
