"""Metric snapshots: what one worker process counted, as a small JSON file, and their sum.

Each worker of a role writes its file every second, atomically (a temporary file renamed
over the old one), so a reader never sees half a file. The process that answers
``/metrics`` reads every file of its role and adds them up (``sipfleet.mgmt.metrics``).

    {"time": 1717000000.5, "pid": 4711,
     "samples": {"sipfleet_sip_requests_total": [[["INVITE"], 12], [["BYE"], 3]],
                 "sipfleet_sip_handling_seconds": [[[], {"bounds": [...], "counts": [...],
                                                          "sum": 0.01}]]}}
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipfleet.stats import HistogramSnapshot

log = logging.getLogger(__name__)

Labels = tuple[str, ...]
Value = float | HistogramSnapshot
Series = dict[Labels, Value]  # label values -> value
Samples = dict[str, Series]  # metric name -> its series


@dataclass(frozen=True, slots=True)
class Snapshot:
    worker: str  # the file's stem: the worker's index
    time: float  # unix seconds of the write
    samples: Samples


def encode(samples: Samples, now: float) -> bytes:
    body = {
        name: [[list(labels), value] for labels, value in by_labels.items()]
        for name, by_labels in samples.items()
    }
    return json.dumps({"time": now, "pid": os.getpid(), "samples": body}).encode()


def decode(data: bytes, worker: str) -> Snapshot:
    """Raises ValueError for anything but a snapshot (a file cut short, another format)."""
    document = json.loads(data)
    if not isinstance(document, dict) or not isinstance(document.get("samples"), dict):
        raise ValueError("not a metrics snapshot")
    samples: Samples = {}
    for name, entries in document["samples"].items():
        by_labels: dict[Labels, Value] = {}
        for labels, value in entries:
            if not isinstance(value, int | float | dict):
                raise ValueError(f"{name}: bad value {value!r}")
            by_labels[tuple(str(label) for label in labels)] = value
        samples[str(name)] = by_labels
    return Snapshot(worker, float(document["time"]), samples)


def write(path: Path, samples: Samples, now: float) -> None:
    """Replace ``path`` with the snapshot in one rename (the directory is made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(encode(samples, now))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read(path: Path) -> Snapshot | None:
    """The snapshot in ``path``; None when there is none or it cannot be read."""
    try:
        return decode(path.read_bytes(), path.stem)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        log.warning("metrics snapshot %s ignored: %s", path, exc)
        return None


def read_all(directory: Path) -> list[Snapshot]:
    """Every worker's snapshot in ``directory`` (none when it does not exist)."""
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    return [snapshot for path in paths if (snapshot := read(path)) is not None]


def add_into(total: Samples, more: Samples, names: Iterable[str]) -> None:
    """Add the counters and histograms ``names`` of ``more`` into ``total``. A histogram
    with other bounds than the one there (a snapshot from another version) is skipped."""
    for name in names:
        into = total.setdefault(name, {})
        for labels, value in more.get(name, {}).items():
            there = into.get(labels)
            if there is None:
                into[labels] = _copy(value)
            else:
                into[labels] = _added(there, value)


def _copy(value: Value) -> Value:
    if isinstance(value, dict):
        return {**value, "counts": list(_counts(value))}
    return value


def _added(a: Value, b: Value) -> Value:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.get("bounds") != b.get("bounds"):
            return a
        counts = [x + y for x, y in zip(_counts(a), _counts(b), strict=True)]
        return {"bounds": a["bounds"], "counts": counts, "sum": _sum(a) + _sum(b)}
    if isinstance(a, dict) or isinstance(b, dict):
        return a  # a counter in one file, a histogram in another: keep what was there
    return a + b


def _counts(histogram: HistogramSnapshot) -> list[int]:
    counts: Any = histogram["counts"]
    return [int(count) for count in counts]


def _sum(histogram: HistogramSnapshot) -> float:
    total: Any = histogram["sum"]
    return float(total)
