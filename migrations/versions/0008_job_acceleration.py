"""Fast modes: each job's requested acceleration and what the render did

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 18:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("acceleration", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("acceleration_result", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("acceleration_result")
        batch.drop_column("acceleration")
