"""LoRA adapters: the loras table, and the adapters and flow shift of each job

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from jobs.db import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loras",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("format", sa.String(20), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("storage_key", sa.String(500), nullable=False),
        sa.Column("recommended", sa.JSON(), nullable=True),
        sa.Column("public", sa.Boolean(), nullable=False),
        sa.Column("use_count", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_loras_owner_id_id", "loras", ["owner_id", "id"])
    op.create_index("ix_loras_public_id", "loras", ["public", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("loras", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("flow_shift", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("flow_shift")
        batch.drop_column("loras")
    op.drop_index("ix_loras_public_id", table_name="loras")
    op.drop_index("ix_loras_owner_id_id", table_name="loras")
    op.drop_table("loras")
