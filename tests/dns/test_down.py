"""The hold on destinations that did not answer: tried last for a while, never dropped."""

from __future__ import annotations

from sipfleet.dns.down import DownList
from sipfleet.transport.base import Destination

A, B, C = (Destination("udp", f"192.0.2.{n}", 5060) for n in (1, 2, 3))


def test_a_held_destination_is_tried_last_until_the_hold_runs_out() -> None:
    down = DownList(hold=30.0)
    down.mark(A, now=100.0)
    assert down.order([A, B, C], now=100.0) == [B, C, A]
    assert down.order([A, B, C], now=129.9) == [B, C, A]
    assert down.order([A, B, C], now=130.0) == [A, B, C]
    assert down.order([A], now=110.0) == [A]  # the last resort is still tried


def test_the_hold_is_by_address_not_by_socket() -> None:
    down = DownList()
    down.mark(A._replace(local=("10.0.0.1", 5060)), now=0.0)
    assert down.order([A, B], now=1.0) == [B, A]


def test_the_list_is_bounded() -> None:
    down = DownList(hold=30.0, max_entries=2)
    down.mark(A, now=0.0)
    down.mark(B, now=1.0)
    down.mark(C, now=2.0)  # nothing expired yet: the oldest mark goes
    assert len(down) == 2
    assert down.order([A, B, C], now=3.0) == [A, B, C]  # A, unmarked, first; B and C held
