"""Listening sockets (transport/sockets.py): a taken address is refused, naming it."""

from __future__ import annotations

import errno

import pytest

from sipfleet.config.listen import ListenAddress, Transport
from sipfleet.transport.sockets import bind_all, bind_for_workers, listen_address_of


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_a_second_copy_of_a_role_with_workers_is_refused_not_let_in(transport: Transport) -> None:
    """SO_REUSEPORT would let a second process bind the same address and silently take
    part of the traffic; the first bind of each address is made without it."""
    first = bind_for_workers([ListenAddress(transport, "127.0.0.1", 0)], 2)
    try:
        taken = listen_address_of(first[0][0])
        for attempt in (lambda: bind_for_workers([taken], 2), lambda: bind_all([taken])):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno == errno.EADDRINUSE
            assert str(taken) in str(refused.value)
            assert "another copy of this role" in str(refused.value)
    finally:
        for sock in (s for group in first for s in group):
            sock.close()


def test_the_workers_share_a_free_address() -> None:
    sets = bind_for_workers([ListenAddress("udp", "127.0.0.1", 0)], 3)
    try:
        ports = {listen_address_of(group[0]).port for group in sets}
        assert len(ports) == 1
    finally:
        for sock in (s for group in sets for s in group):
            sock.close()
