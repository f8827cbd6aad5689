"""What text the service accepts: what PostgreSQL can store and UTF-8 can encode.

PostgreSQL's text refuses NUL characters, and a lone UTF-16 surrogate (which JSON's ``\\ud800``
escape produces) cannot be encoded as UTF-8 at all: either one reaching the database is a driver
error, i.e. a 500. Inputs are checked against this rule where they enter (request schemas, query
strings, paths, cursors), so the client gets a 4xx naming the field instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

INVALID_TEXT_MESSAGE = "must not contain NUL characters or invalid UTF-8 (lone surrogates)"


def is_storable_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_bad_text(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string inside ``value`` (nested lists and mappings, keys too)
    that is not storable; "" for ``value`` itself; None when every string is fine."""
    if isinstance(value, str):
        return None if is_storable_text(value) else path
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not is_storable_text(key):
                return path or "body"
            found = first_bad_text(item, where)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = first_bad_text(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None
