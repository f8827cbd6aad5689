"""compose.yaml read the way Docker Compose reads it: YAML anchors and merge keys resolved, and
``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$`` interpolated from a given environment."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def load(name: str = "compose.yaml") -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


def interpolate(value: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        current = env.get(name)
        if op in (":-", "-"):
            return current if current not in (None, "") or (op == "-" and current is not None) else arg
        if op in (":?", "?") and current in (None, "") and not (op == "?" and current is not None):
            raise KeyError(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(replace, value)


def service_environment(compose: dict[str, Any], service: str, env: dict[str, str]) -> dict[str, str]:
    environment = compose["services"][service].get("environment") or {}
    return {key: interpolate(str(value), env) for key, value in environment.items()}


def service_command(compose: dict[str, Any], service: str, env: dict[str, str]) -> list[str]:
    return [interpolate(str(part), env) for part in compose["services"][service]["command"]]
