"""Rows of the cluster database as JSON-ready records: one shape for the management API,
the status page and the CLI (`sipfleet lb target list --json`, `sipfleet status`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from sipfleet.storage import Binding, LbTarget, LbTargetHealth

STALE_AFTER_S = 20  # an LB reports every 5 s: a view older than this is no longer kept


def target_record(target: LbTarget, views: Sequence[LbTargetHealth], now: int) -> dict[str, Any]:
    """A pool target with every LB's view of its health (from ``lb_target_health``)."""
    seen = [v for v in views if (v.pool, v.uri) == (target.pool, target.uri)]
    return {
        "pool": target.pool,
        "uri": target.uri,
        "weight": target.weight,
        "state": target.state,
        "health": {
            view.lb: {
                "health": view.health,
                "since": view.changed,
                "checked": view.checked,
                "stale": now - view.checked > STALE_AFTER_S,
            }
            for view in seen
        },
    }


def binding_record(binding: Binding, now: int) -> dict[str, Any]:
    record = asdict(binding)
    record["expires_in"] = max(0, binding.expires - now)
    return record
