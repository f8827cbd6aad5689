import pytest

from jobs.states import ALLOWED_TRANSITIONS, TERMINAL_STATUSES, IllegalTransition, JobStatus, check_transition


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("queued", "in_progress"),
        ("queued", "cancelled"),
        ("in_progress", "completed"),
        ("in_progress", "failed"),
        ("in_progress", "cancelled"),
        ("in_progress", "queued"),  # worker lost, job retried
        ("failed", "queued"),  # operator retry
    ],
)
def test_legal_transitions_are_allowed(current: str, target: str) -> None:
    assert check_transition(current, target) == JobStatus(target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("completed", "in_progress"),  # a late, redelivered message must not restart a finished job
        ("completed", "queued"),
        ("cancelled", "in_progress"),
        ("cancelled", "completed"),
        ("queued", "completed"),  # nothing completes without running
        ("queued", "queued"),
    ],
)
def test_illegal_transitions_raise(current: str, target: str) -> None:
    with pytest.raises(IllegalTransition, match=f"from '{current}' to '{target}'"):
        check_transition(current, target)


def test_completed_and_cancelled_are_final() -> None:
    assert ALLOWED_TRANSITIONS[JobStatus.COMPLETED] == frozenset()
    assert ALLOWED_TRANSITIONS[JobStatus.CANCELLED] == frozenset()
    assert frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}) == TERMINAL_STATUSES


def test_unknown_status_is_rejected() -> None:
    with pytest.raises(ValueError):
        check_transition("queued", "paused")
