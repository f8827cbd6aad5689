"""`pip install .` (no torch) must be enough for the API, the CLI, the client and the job domain."""

from __future__ import annotations

import subprocess
import sys

# Importing any of these in a process where torch, numpy and diffusers cannot be imported at all.
TORCH_FREE_MODULES = (
    "api.app",
    "vidq.cli",
    "vidq.client",
    "vidq.progress_bar",
    "jobs.capacity",
    "jobs.catalog",
    "jobs.validation",
    "spec.registry",
)


def test_service_side_imports_without_torch() -> None:
    blocked = ("torch", "numpy", "diffusers", "transformers", "safetensors", "PIL", "imageio")
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # any import of them raises ImportError\n"
        f"for module in {TORCH_FREE_MODULES!r}: __import__(module)\n"
        "from api.app import create_app\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
