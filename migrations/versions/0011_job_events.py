"""job_events: one row per job state change, fanned out by the relay

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 17:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

EVENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", EVENT_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("job_id", "seq", name="uq_job_events_job_id_seq"),
    )
    op.create_index("ix_job_events_unrelayed", "job_events", ["relayed_at", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("last_event_seq", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.add_column(sa.Column("event_id", EVENT_ID, nullable=True))
        batch.create_foreign_key(
            "fk_webhook_deliveries_event_id", "job_events", ["event_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.drop_constraint("fk_webhook_deliveries_event_id", type_="foreignkey")
        batch.drop_column("event_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("last_event_seq")
    op.drop_index("ix_job_events_unrelayed", table_name="job_events")
    op.drop_table("job_events")
