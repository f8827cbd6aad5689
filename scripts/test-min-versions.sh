#!/usr/bin/env bash
# The declared lower bounds, checked: a fresh venv gets the MINIMUM version of every dependency
# pyproject.toml names (uv's lowest-direct resolution), then
#   1. the API-only install (`pip install .`, no extras) must import the API and CLI without torch;
#   2. with the [engine] extra at its minimums, a set of unit tests must pass.
# torch stays the machine's own build (a lower bound is never worth a multi-GB download in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
MIN_VENV=${MIN_VENV:-.venv-min}
UV="$VENV/bin/uv"
MIN_PY="$MIN_VENV/bin/python"
TESTS=${MIN_TESTS:-tests/api/test_metrics.py tests/migrations tests/engine/test_model_locate.py \
  tests/engine/test_pipeline_parity.py}

rm -rf "$MIN_VENV"
"$UV" venv -q -p "$(command -v python3)" "$MIN_VENV"
req() { "$VENV/bin/python" docker/requirements.py "$@"; }

echo "== minimum versions, API only (no extras)" >&2
req > "$MIN_VENV/base.txt"
"$UV" pip install -q -p "$MIN_PY" --resolution lowest-direct -r "$MIN_VENV/base.txt"
"$UV" pip install -q -p "$MIN_PY" --no-deps .
(cd "$MIN_VENV" && ./bin/python - <<'PY'
import sys
import api.app, vidq.cli, worker.main, jobs.metrics  # noqa: F401  what the API image runs
assert "torch" not in sys.modules, "the API-only install imported torch"
print("API-only install: imports fine without torch")
PY
)
"$MIN_VENV/bin/vidq" --version
VIDQ_DATA_DIR="$MIN_VENV/data" "$MIN_VENV/bin/vidq" models list >/dev/null
if VIDQ_DATA_DIR="$MIN_VENV/data" "$MIN_VENV/bin/vidq" generate --model tiny-wan --prompt x 2>"$MIN_VENV/err.txt"; then
  echo "vidq generate ran without the engine installed" >&2; exit 1
fi
grep -q "pip install 'vidq\[engine\]'" "$MIN_VENV/err.txt"  # one line that says what to install

echo "== minimum versions with the [engine] extra (torch: the machine's $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))" >&2
# torch from the main venv's own wheel source (pip.conf's local files), at the version installed there.
"$VENV/bin/pip" --python "$MIN_PY" install -q "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
req engine --without torch > "$MIN_VENV/engine.txt"
"$UV" pip install -q -p "$MIN_PY" --resolution lowest-direct -r "$MIN_VENV/engine.txt"
"$UV" pip install -q -p "$MIN_PY" "pytest>=8" "pytest-timeout>=2.3" "moto[server]>=5.0"
"$UV" pip list -p "$MIN_PY" 2>/dev/null | grep -iE '^(fastapi|starlette|pydantic|pydantic-settings|sqlalchemy|alembic|celery|uvicorn|prometheus-client|diffusers|transformers|huggingface-hub|tokenizers|safetensors|accelerate|numpy|torch) ' >&2
# Run from the checkout: the tests import the source next to them; the installed copy is the same code.
"$MIN_PY" -m pytest -q -p no:cacheprovider $TESTS
