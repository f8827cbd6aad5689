"""Caches that let repeated work be skipped (text embeddings now; step caching later)."""

from engine.cache.lru import LRUCache

__all__ = ["LRUCache"]
