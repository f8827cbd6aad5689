"""The job state machine: the one place that says which status may follow which.

Any status change in the code base goes through :func:`transition`, so an illegal move (say,
``completed`` back to ``in_progress`` by a late, redelivered message) raises instead of corrupting a
finished job.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

# queued -> in_progress: a worker took it. in_progress -> queued: its worker was lost, try again.
# failed -> queued: an operator retries a dead job.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        super().__init__(f"a job cannot go from {current.value!r} to {target.value!r}")
        self.current = current
        self.target = target


def check_transition(current: JobStatus | str, target: JobStatus | str) -> JobStatus:
    """Return ``target`` as a JobStatus if the move is legal, else raise IllegalTransition."""
    current, target = JobStatus(current), JobStatus(target)
    if target not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target


def is_terminal(status: JobStatus | str) -> bool:
    return JobStatus(status) in TERMINAL_STATUSES
