"""Attention behind one dispatch function; models call `attention(...)` and nothing else."""

from engine.attention.dispatch import BACKENDS, attention, resolve_backend

__all__ = ["BACKENDS", "attention", "resolve_backend"]
