"""A phone behind a NAT stays reachable through sipfleet's default NAT keepalives.

`sipfleet up --listen 203.0.113.10:5060` (README) runs in the lab's server namespace with
no config file. The NAT forgets an idle UDP mapping a few seconds after the default
keepalive interval (conftest.nat_timeout_for_default_keepalives). A phone registers from
behind it and then sends nothing of its own. Beside it, a control flow through the same
NAT, idle as long, proves the NAT really forgot (its conntrack entry is gone). Then a
call to the phone must still ring it: only the LB's keepalives kept its mapping.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.lab import Embedded, find_message, start_phone
from tests.interop.natlab import (
    PHONE_IP,
    SERVER_IP,
    NatLab,
    public_cluster,
    wait_until_the_nat_forgets,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

DOMAIN = "example.com"
PASSWORD = "secret"
PHONE_PORT = 5070


@pytest.fixture(scope="module")
def public(natlab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    users = [f"{user}@{DOMAIN}" for user in ("alice", "bob", "carol")]
    with public_cluster(natlab, tmp_path_factory.mktemp("nat-up"), "nat", users, PASSWORD) as up:
        yield up


def register_behind_the_nat(
    natlab: NatLab, public: Embedded, workdir: Path, user: str, port: int
) -> None:
    """``user`` registers from PHONE_IP:``port`` (its Contact port too) through the NAT."""
    register = start_phone(
        natlab.phone, "phone_register", workdir, address=PHONE_IP, port=port,
        target=f"{SERVER_IP}:{public.lb_port}",
        keys={"user": user, "domain": DOMAIN, "contact_port": str(port), "expires": "600"},
        credentials=(user, PASSWORD), timeout=10,
    )  # fmt: skip
    registered = register.wait(20)
    assert registered.ok, f"{registered.explain()}\n{public.log_text()[-3000:]}"


def test_default_keepalives_keep_a_natted_phone_reachable(
    natlab: NatLab, public: Embedded, tmp_path: Path
) -> None:
    assert public.lb_host == SERVER_IP
    lb = f"{SERVER_IP}:{public.lb_port}"
    timeout = natlab.udp_timeout
    register_behind_the_nat(natlab, public, tmp_path, "bob", PHONE_PORT)
    shown = public.sipfleet("location", "show", f"bob@{DOMAIN}").stdout
    assert f"{PHONE_IP}:{PHONE_PORT}" in shown, shown  # the Contact, as the phone wrote it

    # the phone listens (and answers the keepalive OPTIONS: -aa; each counts as a call)
    bob = start_phone(
        natlab.phone, "phone_callee_hangup", tmp_path, address=PHONE_IP,
        port=PHONE_PORT, keys={"user": "bob"}, timeout=timeout + 30, calls=100, extra=("-aa",),
    )  # fmt: skip
    wait_until_the_nat_forgets(natlab)  # a flow as idle as the phone's is forgotten

    alice = start_phone(
        natlab.server, "phone_caller_wait_bye", tmp_path, address=SERVER_IP, port=6000,
        target=lb, keys={"user": "alice", "peer": "bob", "domain": DOMAIN},
        credentials=("alice", PASSWORD), timeout=10,
    )  # fmt: skip
    caller = alice.wait(20)
    callee = bob.wait(1)  # it would wait for more calls: stopped by PID
    log = public.log_text()[-3000:]
    assert find_message(callee.messages, "received", "INVITE "), f"{callee.explain()}\n{log}"
    assert caller.ok, f"{caller.explain()}\n{callee.messages[-3000:]}\n{log}"
    # what kept the mapping: the LB's keepalives, received through the NAT
    assert find_message(callee.messages, "received", "OPTIONS "), callee.messages[-3000:]


def test_every_in_dialog_request_crosses_the_nat_both_ways(
    natlab: NatLab, public: Embedded, tmp_path: Path
) -> None:
    """The phone behind the NAT (its Via and Contact private) answers a call and the two
    sides send each other re-INVITE, UPDATE, INFO, the ACK of a 2xx and the BYE: each
    request of the phone's goes to the cluster, each toward it down its NAT binding."""
    lb = f"{SERVER_IP}:{public.lb_port}"
    port = PHONE_PORT + 1
    register_behind_the_nat(natlab, public, tmp_path, "carol", port)
    carol = start_phone(
        natlab.phone, "phone_callee_dialog", tmp_path, address=PHONE_IP, port=port,
        keys={"user": "carol"}, timeout=20,
    )  # fmt: skip
    alice = start_phone(
        natlab.server, "phone_caller_dialog", tmp_path, address=SERVER_IP, port=6001,
        target=lb, keys={"user": "alice", "peer": "carol", "domain": DOMAIN},
        credentials=("alice", PASSWORD), timeout=20,
    )  # fmt: skip
    caller, callee = alice.wait(30), carol.wait(30)
    log = public.log_text()[-3000:]
    assert caller.ok, f"{caller.explain()}\n{callee.explain()}\n{log}"
    assert callee.ok, f"{callee.explain()}\n{log}"
    for method in ("INVITE ", "ACK ", "UPDATE ", "INFO "):  # the phone's own reached alice
        assert find_message(callee.messages, "sent", method), method
        assert find_message(caller.messages, "received", method), method
    for method in ("INVITE ", "UPDATE ", "INFO ", "ACK ", "BYE "):  # alice's reached it
        assert find_message(callee.messages, "received", method), method
