"""queue_depths: per-queue counters of queued jobs (sharded), filled from the jobs table

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 21:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "queue_depths",
        sa.Column("queue", sa.String(100), primary_key=True),
        sa.Column("shard", sa.SmallInteger(), primary_key=True),
        sa.Column("queued", sa.BigInteger(), nullable=False),
    )
    op.execute(
        "INSERT INTO queue_depths (queue, shard, queued) "
        "SELECT queue, 0, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY queue"
    )


def downgrade() -> None:
    op.drop_table("queue_depths")
