"""The garbage collector of a serving API process: its start-up heap frozen, its young generation
collected rarely.

Under a full load of submits (``benchmarks/bench_service.py``), CPython's default thresholds (a
young collection every 700 net allocations of tracked objects) ran about 30 young and 3 middle
collections a second in each API process and a full one every 3 s: about 5% of its time (measured
with ``gc.callbacks``), and every full collection walked the whole heap (FastAPI, SQLAlchemy,
pydantic, Celery) in one pause of 80 to 100 ms, which every request then in that process waited out.

Almost everything a request allocates is freed by reference counting as it ends; the collector only
finds the rare cycle. So:

- :func:`gc.freeze` moves everything alive at start-up (imports, the app, its routes and models) to
  a permanent generation no collection walks again;
- the young threshold is raised to ``YOUNG_THRESHOLD`` net allocations: collections become rare
  (measured: 7 in a 20-s load instead of about 750) and cyclic garbage is still collected,
  after more of it has gathered (at most the threshold's worth of objects).

Only the processes that serve (``vidq api``), never in-process apps (tests, embedded mode), where a
frozen heap would keep every app built before it alive.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # net allocations of tracked objects between young collections (default 700)
OLDER_THRESHOLDS = (10, 10)  # young collections per middle one, middle per full one (CPython's)


def tune_for_serving() -> None:
    """Call once the app is built, just before the process starts serving."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
