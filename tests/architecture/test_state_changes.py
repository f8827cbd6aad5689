"""Architecture: nothing but `jobs.lifecycle` changes a job's status.

Assigning ``status`` on a stored ``Job`` outside the lifecycle raises at run time
(``tests/jobs/test_lifecycle.py``); what the ORM cannot see is checked here, in the source of every
service package: no bulk ``update(Job)`` / ``insert`` that writes ``status``, no raw SQL writing the
``jobs`` table, and no ``Job(...)`` built with a status outside the lifecycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PACKAGES = ("api", "jobs", "worker", "vidq")
LIFECYCLE = ROOT / "jobs" / "lifecycle.py"
RAW_JOB_WRITE = re.compile(r"\b(update|insert\s+into)\s+jobs\b", re.IGNORECASE)


def service_modules() -> list[Path]:
    return sorted(p for package in SERVICE_PACKAGES for p in (ROOT / package).rglob("*.py") if p != LIFECYCLE)


def _names_job(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "Job"


def status_writes(tree: ast.AST) -> list[int]:
    """Lines that write ``status`` past the ORM's attribute events."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        # update(Job)....values(status=...) and insert(Job)....values(status=...)
        if isinstance(func, ast.Attribute) and func.attr == "values":
            chain = func.value
            while isinstance(chain, ast.Call | ast.Attribute):
                if isinstance(chain, ast.Call) and any(_names_job(arg) for arg in chain.args):
                    if any(keyword.arg == "status" for keyword in node.keywords):
                        lines.append(node.lineno)
                    break
                chain = chain.func if isinstance(chain, ast.Call) else chain.value
        # Job(..., status=...): a job is created queued by lifecycle.create, not by its caller
        if _names_job(func) and any(keyword.arg == "status" for keyword in node.keywords):
            lines.append(node.lineno)
        # text("UPDATE jobs ...")
        if isinstance(func, ast.Name) and func.id == "text" and node.args:
            literal = node.args[0]
            if (
                isinstance(literal, ast.Constant)
                and isinstance(literal.value, str)
                and RAW_JOB_WRITE.search(literal.value)
            ):
                lines.append(node.lineno)
    return lines


def test_only_the_lifecycle_writes_a_jobs_status() -> None:
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in service_modules()
        if (lines := status_writes(ast.parse(path.read_text(), filename=str(path))))
    }
    assert offenders == {}


def test_the_check_catches_each_kind_of_write() -> None:
    source = (
        "session.execute(update(Job).where(Job.id == i).values(status='failed'))\n"
        "session.add(Job(id=i, status='in_progress'))\n"
        "session.execute(text('UPDATE jobs SET status = 1'))\n"
        "session.execute(update(Job).values(heartbeat_at=now))\n"  # other columns are fine
    )
    assert status_writes(ast.parse(source)) == [1, 2, 3]
