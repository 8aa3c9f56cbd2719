"""A phone behind a NAT stays reachable through sipfleet's default NAT keepalives.

`sipfleet up --listen 203.0.113.10:5060` (README) runs in the lab's server namespace with
no config file. The NAT forgets an idle UDP mapping a few seconds after the default
keepalive interval (conftest.nat_timeout_for_default_keepalives). A phone registers from
behind it and then sends nothing of its own. Beside it, a control flow through the same
NAT, idle as long, proves the NAT really forgot: its late answer never arrives. Then a
call to the phone must still ring it: only the LB's keepalives kept its mapping.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.interop.lab import Embedded, embedded_cluster, find_message, start_phone
from tests.interop.natlab import PHONE_IP, SERVER_IP, NatLab

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

DOMAIN = "example.com"
PASSWORD = "secret"
PHONE_PORT = 5070
CONTROL_PORT = 9999

# The control flow: the phone side sends one datagram, the server side answers at once
# and again once the NAT's timeout (argv[1] seconds) has passed since; the phone side
# prints what it received.
SERVER_SIDE = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(20)
data, peer = s.recvfrom(100)
s.sendto(b"at-once", peer)
time.sleep(float(sys.argv[1]) + 2)  # the NAT's idle timeout passing is what is tested
s.sendto(b"late", peer)
"""
PHONE_SIDE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
s.settimeout(10)
s.sendto(b"hello", (sys.argv[4], int(sys.argv[3])))
print(s.recv(100).decode(), flush=True)
s.settimeout(float(sys.argv[1]) + 6)
try:
    print(s.recv(100).decode(), flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""


@pytest.fixture(scope="module")
def public(natlab: NatLab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    workdir = tmp_path_factory.mktemp("nat-up")
    listen = ("--listen", f"{SERVER_IP}:5060")
    with embedded_cluster(workdir, "nat", ns=natlab.server, up_args=listen) as cluster:
        for user in ("alice", "bob"):
            added = cluster.sipfleet(
                "subscriber", "add", f"{user}@{DOMAIN}", "--password", PASSWORD
            )
            assert added.returncode == 0, added.stdout + added.stderr
        yield cluster


def test_default_keepalives_keep_a_natted_phone_reachable(
    natlab: NatLab, public: Embedded, tmp_path: Path
) -> None:
    assert public.lb_host == SERVER_IP
    lb = f"{SERVER_IP}:{public.lb_port}"
    timeout = natlab.udp_timeout
    register = start_phone(
        natlab.phone, "phone_register", tmp_path, address=PHONE_IP, port=PHONE_PORT, target=lb,
        keys={"user": "bob", "domain": DOMAIN, "contact_port": str(PHONE_PORT), "expires": "600"},
        credentials=("bob", PASSWORD), timeout=10,
    )  # fmt: skip
    registered = register.wait(20)
    assert registered.ok, f"{registered.explain()}\n{public.log_text()[-3000:]}"
    shown = public.sipfleet("location", "show", f"bob@{DOMAIN}").stdout
    assert f"{PHONE_IP}:{PHONE_PORT}" in shown, shown  # the Contact, as the phone wrote it

    # the phone listens (and answers the keepalive OPTIONS: -aa; each counts as a call)
    bob = start_phone(
        natlab.phone, "phone_callee_hangup", tmp_path, address=PHONE_IP,
        port=PHONE_PORT, keys={"user": "bob"}, timeout=timeout + 30, calls=100, extra=("-aa",),
    )  # fmt: skip
    args = [str(timeout), SERVER_IP, str(CONTROL_PORT)]
    server_side = natlab.server.popen([sys.executable, "-c", SERVER_SIDE, *args])
    phone_side = natlab.phone.run(
        [sys.executable, "-c", PHONE_SIDE, str(timeout), PHONE_IP, str(CONTROL_PORT), SERVER_IP],
        timeout=timeout + 30,
    )
    server_side.wait(timeout=10)
    # the control flow got its first answer and not the late one: the NAT forgot the
    # mapping, and the phone's REGISTER is older than the control flow
    assert phone_side.stdout.split() == ["at-once", "nothing"], phone_side

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
    register = start_phone(
        natlab.phone, "phone_register", tmp_path, address=PHONE_IP, port=port, target=lb,
        keys={"user": "bob", "domain": DOMAIN, "contact_port": str(port), "expires": "600"},
        credentials=("bob", PASSWORD), timeout=10,
    )  # fmt: skip
    registered = register.wait(20)
    assert registered.ok, f"{registered.explain()}\n{public.log_text()[-3000:]}"
    bob = start_phone(
        natlab.phone, "phone_callee_dialog", tmp_path, address=PHONE_IP, port=port,
        keys={"user": "bob"}, timeout=20,
    )  # fmt: skip
    alice = start_phone(
        natlab.server, "phone_caller_dialog", tmp_path, address=SERVER_IP, port=6001,
        target=lb, keys={"user": "alice", "peer": "bob", "domain": DOMAIN},
        credentials=("alice", PASSWORD), timeout=20,
    )  # fmt: skip
    caller, callee = alice.wait(30), bob.wait(30)
    log = public.log_text()[-3000:]
    assert caller.ok, f"{caller.explain()}\n{callee.explain()}\n{log}"
    assert callee.ok, f"{callee.explain()}\n{log}"
    for method in ("INVITE ", "ACK ", "UPDATE ", "INFO "):  # the phone's own reached alice
        assert find_message(callee.messages, "sent", method), method
        assert find_message(caller.messages, "received", method), method
    for method in ("INVITE ", "UPDATE ", "INFO ", "ACK ", "BYE "):  # alice's reached it
        assert find_message(callee.messages, "received", method), method
