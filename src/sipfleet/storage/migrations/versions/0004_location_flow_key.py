"""RFC 5626 flows keyed by (AOR, instance, reg-id): location.flow_key, and the binding key
(username, domain, contact, flow_key) in place of (username, domain, contact).

Two flows of one phone may now share a contact (docs/storage.md, "Bindings"). The rows of
flows already stored get their flow key; the others keep '' (a plain binding).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FLOW_KEY_LEN = 32


def _flow_key(instance: str, reg_id: int) -> str:
    """model.flow_key as of this revision (a migration keeps its own history)."""
    return hashlib.sha256(f"{reg_id} {instance}".encode()).hexdigest()[:FLOW_KEY_LEN]


def upgrade() -> None:
    with op.batch_alter_table("location") as batch:
        batch.add_column(
            sa.Column("flow_key", sa.String(FLOW_KEY_LEN), nullable=False, server_default="")
        )
    _fill_flow_keys()
    with op.batch_alter_table("location") as batch:
        batch.drop_constraint("location_aor_contact_key", type_="unique")
        batch.create_unique_constraint(
            "location_binding_key", ["username", "domain", "contact", "flow_key"]
        )


def _fill_flow_keys() -> None:
    location = sa.table(
        "location",
        sa.column("id", sa.BigInteger),
        sa.column("instance", sa.String),
        sa.column("reg_id", sa.Integer),
        sa.column("flow_key", sa.String),
    )
    connection = op.get_bind()
    flows = connection.execute(
        sa.select(location.c.id, location.c.instance, location.c.reg_id).where(
            location.c.reg_id.is_not(None), location.c.instance.is_not(None)
        )
    ).all()
    if flows:
        connection.execute(
            location.update()
            .where(location.c.id == sa.bindparam("row_id"))
            .values(flow_key=sa.bindparam("key")),
            [{"row_id": i, "key": _flow_key(instance, reg_id)} for i, instance, reg_id in flows],
        )


def downgrade() -> None:
    """Back to one binding per contact: of the bindings sharing a contact, the oldest stays."""
    op.execute(
        "DELETE FROM location WHERE id NOT IN (SELECT keep FROM (SELECT MIN(id) AS keep "
        "FROM location GROUP BY username, domain, contact) AS oldest)"
    )
    with op.batch_alter_table("location") as batch:
        batch.drop_constraint("location_binding_key", type_="unique")
        batch.create_unique_constraint(
            "location_aor_contact_key", ["username", "domain", "contact"]
        )
        batch.drop_column("flow_key")
