"""The serving process's collector settings (vidq.gc_tuning), checked in a fresh interpreter: freezing
is process-wide and must not touch the test process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json, weakref
from vidq.gc_tuning import YOUNG_THRESHOLD, tune_for_serving

class Node:
    pass

garbage = Node(); garbage.me = garbage            # a cycle only the collector can free
gone = weakref.ref(garbage); del garbage
tune_for_serving()
print(json.dumps({
    "garbage_freed": gone() is None,
    "frozen": gc.get_freeze_count(),
    "threshold": gc.get_threshold(),
    "expected_young": YOUNG_THRESHOLD,
}))
"""


def test_start_up_garbage_is_freed_the_rest_frozen_and_young_collections_rare() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["garbage_freed"]
    assert seen["frozen"] > 1000  # the interpreter's and the imports' objects, not just ours
    assert seen["threshold"][0] == seen["expected_young"] > 700
