"""What ``sipfleet lcr test NUMBER --cap N [--from URI] [--draws K] [--json]`` prints.

The CLI only loads the table and prints these lines::

    draws = dry_run(table, "4312345", parse_capability("phone"), draws=3)
    for line in json_lines(draws):  # or human_lines("4312345", PHONE, draws)
        print(line)

With ``--json`` each draw is one line: a JSON list with one object per trunk, in the order
they would be tried (``gw``, ``uri``, ``priority``, ``weight``, ``capability``, ``rule``).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

from sipfleet.routing.lcr import (
    CAPABILITY_NAMES,
    Defunct,
    LcrTable,
    Trunk,
    is_single_capability,
    load_gws,
)


def parse_capability(text: str, names: Mapping[str, int] = CAPABILITY_NAMES) -> int:
    """``--cap``: a capability name (phone, fax, ...) or its bit value; ValueError if neither."""
    bit = names.get(text.strip().lower())
    if bit is None:
        try:
            bit = int(text, 0)
        except ValueError:
            known = ", ".join(f"{name} = {value}" for name, value in sorted(names.items()))
            raise ValueError(f"capability {text!r} is not a name ({known}) or a number") from None
    if not is_single_capability(bit):
        raise ValueError(f"capability {text!r} is not a single bit (1, 2, 4, ...)")
    return bit


def dry_run(
    table: LcrTable,
    number: str,
    capability: int,
    from_uri: str | None = None,
    request_uri: str | None = None,
    *,
    draws: int = 1,
    rng: random.Random | None = None,
    is_defunct: Defunct | None = None,
) -> list[list[Trunk]]:
    """``draws`` independent ``load_gws`` answers for the same call."""
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    return [
        load_gws(table, number, capability, from_uri, request_uri, rng=rng, is_defunct=is_defunct)
        for _ in range(draws)
    ]


def trunk_record(trunk: Trunk) -> dict[str, str | int]:
    return {
        "gw": trunk.gateway.name,
        "uri": str(trunk.uri),
        "priority": trunk.priority,
        "weight": trunk.weight,
        "capability": trunk.capability,
        "rule": trunk.rule,
    }


def json_lines(draws: Sequence[Sequence[Trunk]]) -> Iterator[str]:
    """One compact JSON list per draw (an empty list when no trunk routes the call)."""
    for trunks in draws:
        yield json.dumps([trunk_record(trunk) for trunk in trunks], separators=(",", ":"))


def human_lines(
    number: str,
    capability: int,
    draws: Sequence[Sequence[Trunk]],
    names: Mapping[str, int] = CAPABILITY_NAMES,
) -> Iterator[str]:
    """Each draw as a numbered list of trunks; with several draws, how often each came first."""
    label = _capability_label(capability, names)
    if not any(draws):
        yield f"{number} ({label}): no route"
        return
    for index, trunks in enumerate(draws, 1):
        heading = f"draw {index}: " if len(draws) > 1 else ""
        yield f"{heading}{number} ({label}): {len(trunks)} trunk(s)"
        width = max((len(trunk.gateway.name) for trunk in trunks), default=0)
        for position, trunk in enumerate(trunks, 1):
            yield (
                f"  {position}. {trunk.gateway.name:<{width}}  {trunk.uri}"
                f"  (rule {trunk.rule}, priority {trunk.priority}, weight {trunk.weight})"
            )
    if len(draws) > 1:
        yield from _first_trunk_summary(draws)


def _first_trunk_summary(draws: Sequence[Sequence[Trunk]]) -> Iterator[str]:
    firsts = Counter(trunks[0].gateway.name for trunks in draws if trunks)
    yield f"first trunk over {len(draws)} draws:"
    for name, count in sorted(firsts.items(), key=lambda item: (-item[1], item[0])):
        yield f"  {name}: {count} ({100 * count / len(draws):.1f} %)"


def _capability_label(capability: int, names: Mapping[str, int]) -> str:
    for name, bit in names.items():
        if bit == capability:
            return f"{name} = {bit}"
    return f"capability {capability}"
