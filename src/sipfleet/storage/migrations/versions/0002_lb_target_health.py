"""Each LB's view of its pool targets: lb_target_health (docs/lb.md).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def upgrade() -> None:
    op.create_table(
        "lb_target_health",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("lb", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(16), nullable=False),
        sa.Column("uri", sa.String(255), nullable=False),
        sa.Column("health", sa.String(8), nullable=False),
        sa.Column("changed", sa.BigInteger(), nullable=False),
        sa.Column("checked", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("lb", "pool", "uri", name="lb_target_health_key"),
        sa.CheckConstraint("health IN ('up', 'down', 'unknown')", name="lb_target_health_check"),
        **OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("lb_target_health")
