"""The worker's Celery app is findable the way `celery -A worker.celery_app worker` looks for it."""

from __future__ import annotations

import subprocess
import sys

from jobs.broker import RENDER_TASK, WEBHOOK_TASK


def test_celery_finds_the_app_and_its_named_tasks() -> None:
    # A fresh interpreter: the lookup `celery -A` does, then the imports a worker child performs.
    code = (
        "from celery.app.utils import find_app;"
        "app = find_app('worker.celery_app');"
        "app.loader.import_default_modules();"
        "print(' '.join(sorted(t for t in app.tasks if t.startswith('vidq.'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == sorted([RENDER_TASK, WEBHOOK_TASK])


def test_task_module_imports_first_without_a_loop() -> None:
    code = "import worker.tasks, worker.celery_app; print(worker.tasks.render.name)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == RENDER_TASK
