"""Accounting: acc, one call record per answered call leg (docs/storage.md).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _text(name: str, length: int, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length), nullable=nullable)


def _ms(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger(), nullable=True)


def upgrade() -> None:
    op.create_table(
        "acc",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        _text("call_id", 255, nullable=False),
        _text("from_tag", 128, nullable=False),
        _text("to_tag", 128, nullable=False),
        _text("caller", 512),
        _text("caller_shown", 512),
        _text("callee", 512),
        _text("destination", 512),
        _text("gateway", 64),
        sa.Column("status", sa.Integer(), nullable=True),
        _text("reason", 255),
        _ms("start_ms"),
        _ms("answer_ms"),
        _ms("end_ms"),
        _ms("duration_ms"),
        _text("ended_by", 16),
        _text("proxy", 64),
        sa.UniqueConstraint("call_id", "from_tag", "to_tag", name="acc_call_key"),
        **OPTIONS,
    )
    op.create_index("acc_start_idx", "acc", ["start_ms"])
    op.create_index("acc_open_idx", "acc", ["end_ms", "answer_ms"])


def downgrade() -> None:
    op.drop_table("acc")
