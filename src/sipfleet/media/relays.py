"""The media relays of a cluster: their addresses and which one takes a call. No I/O.

Addresses are written as Kamailio's ``rtpengine_sock`` writes them:
``udp:127.0.0.1:2223``, with a weight ``udp:127.0.0.1:2223=2``, IPv6 in brackets
``udp:[::1]:2223`` (``udp6:`` is accepted too). A relay's ``name`` (``127.0.0.1:2223``,
``[::1]:2223``) is how a call finds it again.

A call's relay is chosen by weighted rendezvous hashing of its Call-ID over the relays
that are up: every proxy of a pool with the same relays up picks the same relay without
talking to the others, a relay going down moves only its own calls, and a relay with
weight 2 takes twice the share of one with weight 1.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

MAX_WEIGHT: Final = 1000
_HOST_NAME: Final = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_ENTRY: Final = re.compile(
    r"(?P<scheme>udp6?):"
    r"(?P<host>\[[^\]]*\]|[^:\[\]=]+):"  # [IPv6] or IPv4 or a name
    r"(?P<port>\d{1,5})(=(?P<weight>\d{1,6}))?"
)


@dataclass(frozen=True, slots=True)
class RelayAddress:
    """One rtpengine's ng control address. ``host`` is an IP address (IPv6 without
    brackets) or a host name."""

    host: str
    port: int
    weight: int = 1
    name: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "name", f"{shown}:{self.port}")

    @classmethod
    def parse(cls, entry: str) -> RelayAddress:
        """``udp:host:port[=weight]``; ValueError naming the entry when it is not one."""
        match = _ENTRY.fullmatch(entry.strip())
        if match is None:
            raise ValueError(
                f"media relay {entry!r}: expected udp:HOST:PORT or udp:HOST:PORT=WEIGHT"
            )
        host = _host(match["host"], entry)
        port = int(match["port"])
        weight = int(match["weight"] or 1)
        if not 0 < port < 65536:
            raise ValueError(f"media relay {entry!r}: port {port} out of range")
        if not 0 < weight <= MAX_WEIGHT:
            raise ValueError(f"media relay {entry!r}: weight must be 1 to {MAX_WEIGHT}")
        return cls(host, port, weight)


def _host(text: str, entry: str) -> str:
    if text.startswith("["):
        try:
            return ipaddress.IPv6Address(text[1:-1]).compressed
        except ValueError:
            raise ValueError(f"media relay {entry!r}: {text} is not an IPv6 address") from None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    if _HOST_NAME.fullmatch(text) is None or text.replace(".", "").isdigit():
        raise ValueError(f"media relay {entry!r}: {text!r} is not an address or a host name")
    return text.lower()


def parse_relays(entries: Iterable[str]) -> list[RelayAddress]:
    """The relays of a config list; ValueError naming a bad or repeated entry."""
    relays: list[RelayAddress] = []
    seen: set[str] = set()
    for entry in entries:
        relay = RelayAddress.parse(entry)
        if relay.name in seen:
            raise ValueError(f"media relay {entry!r}: {relay.name} is listed twice")
        seen.add(relay.name)
        relays.append(relay)
    return relays


def rendezvous_pick(call_id: str, relays: Sequence[RelayAddress]) -> RelayAddress | None:
    """The relay with the highest weighted score for ``call_id``; None when there are none.

    The score ``weight / -ln(h)``, with ``h`` a hash of (relay, Call-ID) uniform in (0, 1),
    makes each relay win with probability weight / total weight (the logarithmic method
    of weighted rendezvous hashing). The hash is BLAKE2b, not Python's ``hash``, which
    differs between processes."""
    best: RelayAddress | None = None
    best_score = -1.0
    for relay in relays:
        score = relay.weight / -math.log(_unit_hash(relay.name, call_id))
        # ties (astronomically rare) go to the smaller name, the same in every process
        if score > best_score or (
            score == best_score and best is not None and relay.name < best.name
        ):
            best, best_score = relay, score
    return best


def _unit_hash(name: str, call_id: str) -> float:
    digest = hashlib.blake2b(f"{name}\x00{call_id}".encode(errors="surrogateescape"), digest_size=8)
    # 53 bits, what a float holds exactly: (n + 0.5) / 2^53 is strictly inside (0, 1),
    # so ln() is finite and negative
    return ((int.from_bytes(digest.digest(), "big") >> 11) + 0.5) / 2.0**53
