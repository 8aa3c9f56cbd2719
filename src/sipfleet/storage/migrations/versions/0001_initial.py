"""Initial schema: every table of DESIGN §2 (location, subscriber, usr_preferences,
lb_target, lcr_gw, lcr_gw_cap, lcr_rule, lcr_rule_target, lcr_version).

A migration is history: it spells its tables out rather than importing today's schema.py;
tests/storage/test_migrations.py checks that the result matches schema.py.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


def _id(name: str = "id", **kwargs: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger().with_variant(sa.Integer(), "sqlite"), **kwargs)


def _text(name: str, length: int, nullable: bool = True, default: str | None = None) -> Any:
    return sa.Column(name, sa.String(length), nullable=nullable, server_default=default)


def _int(name: str, default: str | None = None, nullable: bool = False) -> Any:
    return sa.Column(name, sa.Integer(), nullable=nullable, server_default=default)


def _flag(name: str, default: bool) -> Any:
    return sa.Column(
        name, sa.Boolean(), nullable=False, server_default=sa.true() if default else sa.false()
    )


def upgrade() -> None:
    op.create_table(
        "location",
        _id(autoincrement=True, primary_key=True),
        _text("ruid", 64, nullable=False),
        _text("username", 64, nullable=False),
        _text("domain", 128, nullable=False, default=""),
        _text("contact", 512, nullable=False),
        _text("received", 255),
        _text("path", 2048),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.Column("q", sa.Double(), nullable=True),
        _text("callid", 255, nullable=False),
        _int("cseq"),
        sa.Column("last_modified", sa.BigInteger(), nullable=False),
        _int("flags", "0"),
        _int("cflags", "0"),
        _text("user_agent", 255),
        _text("socket", 255),
        _text("methods", 255),
        _text("instance", 255),
        _int("reg_id", nullable=True),
        _text("flow", 255),
        sa.UniqueConstraint("ruid", name="location_ruid_key"),
        sa.UniqueConstraint("username", "domain", "contact", name="location_aor_contact_key"),
        **OPTIONS,
    )
    op.create_index("location_expires_idx", "location", ["expires"])
    op.create_table(
        "subscriber",
        _id(autoincrement=True, primary_key=True),
        _text("username", 64, nullable=False),
        _text("domain", 128, nullable=False),
        _text("ha1", 64, nullable=False),
        _text("ha1_sha256", 64, nullable=False),
        sa.UniqueConstraint("username", "domain", name="subscriber_account_key"),
        **OPTIONS,
    )
    op.create_table(
        "usr_preferences",
        _id(autoincrement=True, primary_key=True),
        _text("username", 64, nullable=False),
        _text("domain", 128, nullable=False),
        _text("attribute", 64, nullable=False),
        _text("value", 255, nullable=False, default=""),
        sa.Column("last_modified", sa.BigInteger(), nullable=False, server_default="0"),
        sa.UniqueConstraint("username", "domain", "attribute", name="usr_preferences_key"),
        **OPTIONS,
    )
    op.create_table(
        "lb_target",
        _id(autoincrement=True, primary_key=True),
        _text("pool", 16, nullable=False),
        _text("uri", 255, nullable=False),
        _int("weight", "1"),
        _text("state", 16, nullable=False, default="active"),
        sa.UniqueConstraint("pool", "uri", name="lb_target_pool_uri_key"),
        sa.CheckConstraint("pool IN ('registrar', 'proxy')", name="lb_target_pool_check"),
        sa.CheckConstraint(
            "state IN ('active', 'draining', 'disabled')", name="lb_target_state_check"
        ),
        **OPTIONS,
    )
    _create_lcr_tables()


def _create_lcr_tables() -> None:
    op.create_table(
        "lcr_gw",
        _id(autoincrement=True, primary_key=True),
        _text("name", 64, nullable=False),
        _text("host", 255, nullable=False),
        _int("port", nullable=True),
        _text("transport", 8),
        _int("strip", "0"),
        _flag("enabled", True),
        _flag("trusted", False),
        sa.UniqueConstraint("name", name="lcr_gw_name_key"),
        **OPTIONS,
    )
    op.create_table(
        "lcr_gw_cap",
        _id(autoincrement=True, primary_key=True),
        _text("gw", 64, nullable=False),
        _int("capability"),
        _text("prefix", 64, nullable=False, default=""),
        sa.ForeignKeyConstraint(["gw"], ["lcr_gw.name"], ondelete="CASCADE"),
        sa.UniqueConstraint("gw", "capability", name="lcr_gw_cap_key"),
        sa.CheckConstraint("capability > 0", name="lcr_gw_cap_capability_check"),
        **OPTIONS,
    )
    op.create_table(
        "lcr_rule",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        _text("prefix", 64, nullable=False, default=""),
        _text("from_uri", 256),
        _text("request_uri", 256),
        _flag("stopper", False),
        _flag("enabled", True),
        **OPTIONS,
    )
    op.create_index("lcr_rule_prefix_idx", "lcr_rule", ["prefix"])
    op.create_table(
        "lcr_rule_target",
        _id(autoincrement=True, primary_key=True),
        _int("rule"),
        _text("gw", 64, nullable=False),
        _int("capability"),
        _int("priority", "1"),
        _int("weight", "1"),
        sa.ForeignKeyConstraint(["rule"], ["lcr_rule.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["gw"], ["lcr_gw.name"], ondelete="CASCADE"),
        sa.UniqueConstraint("rule", "gw", "capability", name="lcr_rule_target_key"),
        sa.CheckConstraint("capability > 0", name="lcr_rule_target_capability_check"),
        sa.CheckConstraint("priority >= 1", name="lcr_rule_target_priority_check"),
        sa.CheckConstraint("weight >= 0", name="lcr_rule_target_weight_check"),
        **OPTIONS,
    )
    op.create_index("lcr_rule_target_gw_idx", "lcr_rule_target", ["gw"])
    op.create_table(
        "lcr_version",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        **OPTIONS,
    )


def downgrade() -> None:
    for table in (
        "lcr_version",
        "lcr_rule_target",
        "lcr_rule",
        "lcr_gw_cap",
        "lcr_gw",
        "lb_target",
        "usr_preferences",
        "subscriber",
        "location",
    ):
        op.drop_table(table)
