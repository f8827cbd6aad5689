"""The load board and the shed decision of several API processes (api.balance), with real processes
sharing one board file: what one writes, the others read."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from api import balance
from api.balance import Balancer, LoadBoard

ROOT = Path(__file__).resolve().parents[2]
# Claims a slot, writes its load, says so, then holds the slot until its stdin closes; it never
# releases the slot, as a process that crashes would not.
HOLDER = (
    "import sys; from pathlib import Path; from api.balance import LoadBoard; "
    "b = LoadBoard(Path(sys.argv[1])); b.write(int(sys.argv[2])); print('ready', flush=True); sys.stdin.read()"
)


@pytest.fixture
def other_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a process that holds a board slot with the given load until the test ends."""
    started: list[subprocess.Popen[str]] = []

    def start(in_flight: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "board"), str(in_flight)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def test_processes_see_each_others_load_in_distinct_slots(tmp_path: Path, other_process) -> None:  # type: ignore[no-untyped-def]
    other_process(7)
    other_process(3)
    mine = LoadBoard(tmp_path / "board")
    mine.write(5)
    assert sorted(mine.loads()) == [3, 5, 7]


def test_the_slot_of_a_process_that_died_is_taken_again(tmp_path: Path, other_process) -> None:  # type: ignore[no-untyped-def]
    proc = other_process(9)
    proc.kill()  # a crash: its slot still says 9 in flight
    proc.wait(10)
    mine = LoadBoard(tmp_path / "board")
    assert mine.slot == 0  # the dead process's, the first
    assert mine.loads() == [0]


def test_a_released_or_stale_slot_counts_as_idle(tmp_path: Path, other_process, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    other_process(12)
    mine = LoadBoard(tmp_path / "board")
    mine.write(4)
    assert sorted(mine.loads()) == [4, 12]
    monkeypatch.setattr(balance.time, "time", lambda: time.monotonic() + 1e10)  # everything long stale
    assert mine.loads() == [0, 0]
    monkeypatch.undo()
    mine.release()
    assert mine.loads() == [12]


def test_the_busiest_process_sheds_a_connection_now_and_then(tmp_path: Path, other_process) -> None:  # type: ignore[no-untyped-def]
    other_process(20)
    balancer = Balancer(LoadBoard(tmp_path / "board"))
    balancer.changed(21)
    assert not balancer.should_shed(21)  # about even: keep the connection
    balancer.changed(40)
    assert balancer.should_shed(40)  # twice the other's load
    assert not balancer.should_shed(40)  # but not again at once: one close per interval
    time.sleep(balance.SHED_INTERVAL_S * 1.5)
    assert balancer.should_shed(40)
    balancer.changed(10)
    time.sleep(balance.SHED_INTERVAL_S * 1.5)
    assert not balancer.should_shed(10)  # the lighter process keeps its clients


def test_a_lone_process_never_sheds(tmp_path: Path) -> None:
    balancer = Balancer(LoadBoard(tmp_path / "board"))
    balancer.changed(500)
    assert not balancer.should_shed(500)
