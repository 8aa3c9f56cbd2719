"""Message-layer figures: µs per message for parsing, header access, edits and serialising.

Run from the repository root:  .venv/bin/python bench/parse_bench.py [--number N] [--repeat R]

Each figure is the best of R repeats of N iterations (the minimum is the figure least
disturbed by other work on the machine). The messages are those of tests/sip/corpus.py.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.sip.corpus import INVITE, REGISTER, RESPONSE_180

from sipfleet.sip import parse_message
from sipfleet.sip.message import Request

RECORD_ROUTE = "<sip:lb1.example.com;lr>"
OUR_VIA = "SIP/2.0/UDP lb1.example.com:5060;branch=z9hG4bK-sf0123456789abcdef"


def bare_split(data: bytes = INVITE) -> object:
    """The floor: cut head from body, the head into lines and each line at its colon."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return [line.partition(":") for line in lines[1:]], body


def invite_access(data: bytes = INVITE) -> bytes:
    """What a proxy reads of every request before it routes it."""
    msg = parse_message(data)
    msg.top_via.branch  # noqa: B018
    msg.from_.tag  # noqa: B018
    msg.to.tag  # noqa: B018
    msg.call_id  # noqa: B018
    msg.cseq  # noqa: B018
    msg.top_route  # noqa: B018
    msg.max_forwards  # noqa: B018
    return msg.serialize()


def invite_proxy_edits(data: bytes = INVITE) -> bytes:
    """§16.6: push our Via, decrement Max-Forwards, Record-Route, pop our Route."""
    msg = parse_message(data)
    assert isinstance(msg, Request)
    msg.push_via(OUR_VIA)
    msg.decrement_max_forwards()
    msg.add_record_route(RECORD_ROUTE)
    msg.pop_route()
    return msg.serialize()


def register_access(data: bytes = REGISTER) -> bytes:
    """What a registrar reads: the AOR, the bindings and the credentials."""
    msg = parse_message(data)
    msg.top_via.branch  # noqa: B018
    msg.to.uri  # noqa: B018
    msg.call_id  # noqa: B018
    msg.cseq  # noqa: B018
    msg.expires  # noqa: B018
    for contact in msg.contacts:
        contact.uri  # noqa: B018
        contact.params.get("expires")
    msg.authorization[0].username  # noqa: B018
    return msg.serialize()


def response_pop_via(data: bytes = RESPONSE_180) -> bytes:
    """A proxy relaying a response upstream (§16.7 step 3)."""
    msg = parse_message(data)
    msg.pop_via()
    return msg.serialize()


CASES: list[tuple[str, Callable[[], object], int]] = [
    ("bare split of the INVITE (baseline)", bare_split, len(INVITE)),
    ("INVITE parse + Via/From/To/Call-ID/CSeq/Route/MF + serialize", invite_access, len(INVITE)),
    ("INVITE parse + push Via, MF-1, RR, pop Route + serialize", invite_proxy_edits, len(INVITE)),
    ("REGISTER parse + contacts + Authorization + serialize", register_access, len(REGISTER)),
    ("180 response parse + pop Via + serialize", response_pop_via, len(RESPONSE_180)),
]


def measure(func: Callable[[], object], number: int, repeat: int) -> float:
    """Microseconds per call, best of ``repeat`` runs of ``number`` calls."""
    func()  # warm caches (header-name table, regexes)
    return min(timeit.repeat(func, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"Python {sys.version.split()[0]}, best of {args.repeat} x {args.number} runs")
    for label, func, size in CASES:
        micros = measure(func, args.number, args.repeat)
        print(f"{micros:7.2f} µs  {label} ({size} B)")


if __name__ == "__main__":
    main()
