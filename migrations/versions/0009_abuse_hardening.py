"""Server-side logout (revoked admin sessions) and webhook deliveries that outlive their endpoint

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 18:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# SQLite's foreign keys have no names: batch mode names them by this convention to drop one.
SQLITE_NAMES = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
PG_FK = "webhook_deliveries_endpoint_id_fkey"
SQLITE_FK = "fk_webhook_deliveries_endpoint_id_webhook_endpoints"


def _endpoint_fk(ondelete: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    name = SQLITE_FK if sqlite else PG_FK
    with op.batch_alter_table("webhook_deliveries", naming_convention=SQLITE_NAMES if sqlite else None) as batch:
        batch.drop_constraint(name, type_="foreignkey")
        batch.create_foreign_key(name, "webhook_endpoints", ["endpoint_id"], ["id"], ondelete=ondelete)


def upgrade() -> None:
    op.create_table(
        "revoked_sessions",
        sa.Column("nonce", sa.String(length=64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    _endpoint_fk("SET NULL")


def downgrade() -> None:
    _endpoint_fk("CASCADE")
    op.drop_table("revoked_sessions")
