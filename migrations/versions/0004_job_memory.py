"""each job's GPU group size, the engine's memory plan and per-stage peak memory

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("memory", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("num_gpus", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("num_gpus")
        batch.drop_column("memory")
