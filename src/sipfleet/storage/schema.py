"""The schema, defined once (SQLAlchemy Core). Migrations and statements are built from it.

Times are integer unix seconds (BIGINT) in every dialect (``acc``: milliseconds): no time
zones, no DATETIME precision differences, and replication copies them unchanged. Text
columns are VARCHAR with binary comparison (MariaDB tables use utf8mb4_bin), so
"sip:Bob@x" and "sip:bob@x" are different contacts everywhere, as RFC 3261 §19.1.4 says
of the user part.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from sipfleet.storage.model import FLOW_KEY_LEN

# Column sizes, also used to reject oversized input with a message naming the field.
USERNAME_LEN = 64
DOMAIN_LEN = 128
CONTACT_LEN = 512
CALLID_LEN = 255
PATH_LEN = 2048
SHORT_TEXT_LEN = 255
HA1_LEN = 64

VERSION_TABLE = "sipfleet_version"

# MariaDB/MySQL: InnoDB, 4-byte UTF-8, byte-wise comparison.
MYSQL_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}

# An auto-increment key: BIGINT, but SQLite only auto-assigns an INTEGER PRIMARY KEY.
Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData()

location = sa.Table(
    "location",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("ruid", sa.String(64), nullable=False),
    sa.Column("username", sa.String(USERNAME_LEN), nullable=False),
    sa.Column("domain", sa.String(DOMAIN_LEN), nullable=False, server_default=""),
    sa.Column("contact", sa.String(CONTACT_LEN), nullable=False),
    sa.Column("received", sa.String(SHORT_TEXT_LEN)),
    sa.Column("path", sa.String(PATH_LEN)),
    sa.Column("expires", sa.BigInteger, nullable=False),
    sa.Column("q", sa.Double),
    sa.Column("callid", sa.String(CALLID_LEN), nullable=False),
    sa.Column("cseq", sa.Integer, nullable=False),
    sa.Column("last_modified", sa.BigInteger, nullable=False),
    sa.Column("flags", sa.Integer, nullable=False, server_default="0"),
    sa.Column("cflags", sa.Integer, nullable=False, server_default="0"),
    sa.Column("user_agent", sa.String(SHORT_TEXT_LEN)),
    sa.Column("socket", sa.String(SHORT_TEXT_LEN)),
    sa.Column("methods", sa.String(SHORT_TEXT_LEN)),
    sa.Column("instance", sa.String(SHORT_TEXT_LEN)),
    sa.Column("reg_id", sa.Integer),
    sa.Column("flow", sa.String(SHORT_TEXT_LEN)),
    # '' for a plain binding, a digest of (reg-id, instance) for an RFC 5626 flow
    # (model.flow_key): with the contact, the binding's key within its AOR. Not part of
    # ``Binding`` (it follows from instance and reg_id).
    sa.Column("flow_key", sa.String(FLOW_KEY_LEN), nullable=False, server_default=""),
    sa.UniqueConstraint("ruid", name="location_ruid_key"),
    # Upserts are keyed on it; its (username, domain) prefix also serves every AOR lookup,
    # so no separate (username, domain) index is kept (it would only slow the writes).
    # MariaDB: (64 + 128 + 512 + 32) characters * 4 bytes = 2,944 of InnoDB's 3,072.
    sa.UniqueConstraint("username", "domain", "contact", "flow_key", name="location_binding_key"),
    sa.Index("location_expires_idx", "expires"),
    **MYSQL_TABLE_OPTIONS,
)

subscriber = sa.Table(
    "subscriber",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(USERNAME_LEN), nullable=False),
    sa.Column("domain", sa.String(DOMAIN_LEN), nullable=False),
    sa.Column("ha1", sa.String(HA1_LEN), nullable=False),
    sa.Column("ha1_sha256", sa.String(HA1_LEN), nullable=False),
    sa.UniqueConstraint("username", "domain", name="subscriber_account_key"),
    **MYSQL_TABLE_OPTIONS,
)

usr_preferences = sa.Table(
    "usr_preferences",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(USERNAME_LEN), nullable=False),
    sa.Column("domain", sa.String(DOMAIN_LEN), nullable=False),
    sa.Column("attribute", sa.String(64), nullable=False),
    sa.Column("value", sa.String(SHORT_TEXT_LEN), nullable=False, server_default=""),
    sa.Column("last_modified", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("username", "domain", "attribute", name="usr_preferences_key"),
    **MYSQL_TABLE_OPTIONS,
)

lb_target = sa.Table(
    "lb_target",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("pool", sa.String(16), nullable=False),
    sa.Column("uri", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("weight", sa.Integer, nullable=False, server_default="1"),
    sa.Column("state", sa.String(16), nullable=False, server_default="active"),
    sa.UniqueConstraint("pool", "uri", name="lb_target_pool_uri_key"),
    sa.CheckConstraint("pool IN ('registrar', 'proxy')", name="lb_target_pool_check"),
    sa.CheckConstraint("state IN ('active', 'draining', 'disabled')", name="lb_target_state_check"),
    **MYSQL_TABLE_OPTIONS,
)

# Each LB's view of its pool targets (docs/lb.md): written by the LB when a target's
# health changes and every few seconds (``checked`` shows a view that is no longer
# updated), read by `sipfleet lb target list` from any host.
lb_target_health = sa.Table(
    "lb_target_health",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("lb", sa.String(64), nullable=False),
    sa.Column("pool", sa.String(16), nullable=False),
    sa.Column("uri", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("health", sa.String(8), nullable=False),
    sa.Column("changed", sa.BigInteger, nullable=False),
    sa.Column("checked", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("lb", "pool", "uri", name="lb_target_health_key"),
    sa.CheckConstraint("health IN ('up', 'down', 'unknown')", name="lb_target_health_check"),
    **MYSQL_TABLE_OPTIONS,
)

# LCR (DESIGN §3, docs/lcr.md): the columns are those of the row types in storage/lcr_rows.py.
# Gateways are referred to by name, as the rows and the TOML file do; rule ids are chosen
# by the operator (the file's ``id``), so they are plain keys, never auto-assigned.
GW_NAME_LEN = 64
LCR_PREFIX_LEN = 64
LCR_PATTERN_LEN = 256  # lcr_rows.MAX_PATTERN_LENGTH

lcr_gw = sa.Table(
    "lcr_gw",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(GW_NAME_LEN), nullable=False),
    sa.Column("host", sa.String(SHORT_TEXT_LEN), nullable=False),
    sa.Column("port", sa.Integer),
    sa.Column("transport", sa.String(8)),
    sa.Column("strip", sa.Integer, nullable=False, server_default="0"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    # A trusted gateway gets the caller's real identity even when the caller asked for
    # privacy (DESIGN §4); an untrusted one gets the anonymised From.
    sa.Column("trusted", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.UniqueConstraint("name", name="lcr_gw_name_key"),
    **MYSQL_TABLE_OPTIONS,
)

lcr_gw_cap = sa.Table(
    "lcr_gw_cap",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "gw",
        sa.String(GW_NAME_LEN),
        sa.ForeignKey("lcr_gw.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("capability", sa.Integer, nullable=False),  # bit field: 1 phone, 2 fax, ...
    sa.Column("prefix", sa.String(LCR_PREFIX_LEN), nullable=False, server_default=""),
    sa.UniqueConstraint("gw", "capability", name="lcr_gw_cap_key"),
    sa.CheckConstraint("capability > 0", name="lcr_gw_cap_capability_check"),
    **MYSQL_TABLE_OPTIONS,
)

lcr_rule = sa.Table(
    "lcr_rule",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("prefix", sa.String(LCR_PREFIX_LEN), nullable=False, server_default=""),
    sa.Column("from_uri", sa.String(LCR_PATTERN_LEN)),  # glob; NULL matches any caller
    sa.Column("request_uri", sa.String(LCR_PATTERN_LEN)),  # glob; NULL matches any target
    sa.Column("stopper", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Index("lcr_rule_prefix_idx", "prefix"),
    **MYSQL_TABLE_OPTIONS,
)

lcr_rule_target = sa.Table(
    "lcr_rule_target",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("rule", sa.Integer, sa.ForeignKey("lcr_rule.id", ondelete="CASCADE"), nullable=False),
    sa.Column(
        "gw",
        sa.String(GW_NAME_LEN),
        sa.ForeignKey("lcr_gw.name", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("capability", sa.Integer, nullable=False),  # the bits this trunk serves
    sa.Column("priority", sa.Integer, nullable=False, server_default="1"),  # 1 is tried first
    sa.Column("weight", sa.Integer, nullable=False, server_default="1"),
    # One gateway may serve a rule twice with different capabilities (phone and fax at
    # different priorities, as in the reference example of DESIGN §3).
    sa.UniqueConstraint("rule", "gw", "capability", name="lcr_rule_target_key"),
    sa.Index("lcr_rule_target_gw_idx", "gw"),
    sa.CheckConstraint("capability > 0", name="lcr_rule_target_capability_check"),
    sa.CheckConstraint("priority >= 1", name="lcr_rule_target_priority_check"),
    sa.CheckConstraint("weight >= 0", name="lcr_rule_target_weight_check"),
    **MYSQL_TABLE_OPTIONS,
)

# One row (id = 1): bumped by every LCR write in the same transaction, and by
# `sipfleet lcr reload`. Proxies poll it and reload the four tables only when it changed.
lcr_version = sa.Table(
    "lcr_version",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    **MYSQL_TABLE_OPTIONS,
)

# Accounting (docs/storage.md, "Accounting (acc)"): one row per call leg the proxy
# answered, keyed by (Call-ID, caller's From tag, callee's To tag). Times are unix
# *milliseconds* here, unlike the other tables: calls are billed by their duration, and
# two ends rounded to whole seconds could each move it by up to a second. The key columns
# are kept small enough for InnoDB's 3,072-byte index key in utf8mb4 (4 bytes a
# character): (255 + 128 + 128) * 4 = 2,044. Oversized values are truncated to these
# sizes, never refused (storage/accounting.py): a call record must not be lost.
TAG_LEN = 128
URI_LEN = CONTACT_LEN
PROXY_NAME_LEN = 64
ENDED_BY_LEN = 16

acc = sa.Table(
    "acc",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(CALLID_LEN), nullable=False),
    sa.Column("from_tag", sa.String(TAG_LEN), nullable=False),  # the caller's tag
    sa.Column("to_tag", sa.String(TAG_LEN), nullable=False),  # the callee's tag
    # Every other column is NULL in a row that a BYE wrote before the answer was stored.
    sa.Column("caller", sa.String(URI_LEN)),  # the From URI as sent, even when anonymised
    sa.Column("caller_shown", sa.String(URI_LEN)),  # the From URI the callee saw
    sa.Column("callee", sa.String(URI_LEN)),  # the Request-URI the caller dialled
    sa.Column("destination", sa.String(URI_LEN)),  # the answering branch's Request-URI
    sa.Column("gateway", sa.String(GW_NAME_LEN)),  # that branch's LCR gateway; NULL: on-net
    sa.Column("status", sa.Integer),
    sa.Column("reason", sa.String(SHORT_TEXT_LEN)),
    sa.Column("start_ms", sa.BigInteger),  # the INVITE arrived
    sa.Column("answer_ms", sa.BigInteger),  # the 2xx was sent; NULL for a failed call
    sa.Column("end_ms", sa.BigInteger),  # BYE or failure; NULL while the call lasts
    sa.Column("duration_ms", sa.BigInteger),  # end - answer; 0 for a failed call
    sa.Column("ended_by", sa.String(ENDED_BY_LEN)),  # caller, callee, max-duration
    sa.Column("proxy", sa.String(PROXY_NAME_LEN)),  # the node that wrote the answer
    sa.UniqueConstraint("call_id", "from_tag", "to_tag", name="acc_call_key"),
    sa.Index("acc_start_idx", "start_ms"),
    # The open calls (end_ms IS NULL), oldest answer first: close_overdue's range.
    sa.Index("acc_open_idx", "end_ms", "answer_ms"),
    **MYSQL_TABLE_OPTIONS,
)

TABLES = tuple(metadata.sorted_tables)
