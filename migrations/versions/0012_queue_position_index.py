"""jobs: the queue index carries the id, so a job's queue position counts only the jobs ahead of it

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 20:58:00
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # (status, queue) left `id < :id` to a filter over every queued job of the queue (the whole backlog
    # per read); with the id in the index it is a range, as long as the position itself.
    op.create_index("ix_jobs_status_queue_id", "jobs", ["status", "queue", "id"])
    op.drop_index("ix_jobs_status_queue", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status_queue", "jobs", ["status", "queue"])
    op.drop_index("ix_jobs_status_queue_id", table_name="jobs")
