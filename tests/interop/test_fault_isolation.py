"""Fault isolation on `sipfleet up` as users start it (no config file) and with the
cluster example: a role killed again and again is restarted with a growing back-off and
reported by `sipfleet status`, while the other roles go on answering."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

import pytest

from tests.interop.lab import Embedded

pytestmark = [pytest.mark.interop]
KILLS = 3  # back-off 1 s, 2 s, then 4 s: the last is seen, not waited out


def status(embedded: Embedded) -> tuple[int, dict[str, Any]]:
    shown = embedded.sipfleet("status", "--json", *embedded.up_args)  # -c: the same data dir
    return shown.returncode, json.loads(shown.stdout)


def role(view: dict[str, Any], name: str) -> dict[str, Any]:
    return next(each for each in view["roles"] if each["name"] == name)


def wait_until_running(embedded: Embedded, name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, view = status(embedded)
        if code == 0 and role(view, name)["state"] == "running":
            return role(view, name)
        time.sleep(0.1)
    raise AssertionError(f"{name} not running after {timeout} s: {view}")


def lb_answers(embedded: Embedded) -> bool:
    """An OPTIONS for the LB itself, from inside its namespace, gets 200."""
    script = (
        "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        "s.sendto(b'OPTIONS sip:127.0.0.1:5060 SIP/2.0\\r\\nVia: SIP/2.0/UDP 127.0.0.1:9;"
        "branch=z9hG4bKfi1\\r\\nFrom: <sip:t@x>;tag=1\\r\\nTo: <sip:127.0.0.1>\\r\\n"
        "Call-ID: fi1\\r\\nCSeq: 1 OPTIONS\\r\\nContent-Length: 0\\r\\n\\r\\n',"
        "('127.0.0.1',5060));print(s.recv(65535).split(b' ')[1].decode())"
    )
    probe = embedded.ns.run([sys.executable, "-c", script], capture_output=True, text=True)
    return str(probe.stdout).strip() == "200"


def test_a_role_killed_again_and_again_never_takes_the_others_down(
    default_or_example: Embedded,
) -> None:
    embedded = default_or_example
    code, view = status(embedded)
    assert code == 0, view
    victim = next(each["name"] for each in view["roles"] if each["role"] == "registrar")
    others = {each["name"]: each["pid"] for each in view["roles"] if each["name"] != victim}
    assert "lb" in others
    delays = []
    for _ in range(KILLS):
        registrar = wait_until_running(embedded, victim, 10)
        os.kill(registrar["pid"], signal.SIGKILL)  # a pid `sipfleet up` started for us
        deadline = time.monotonic() + 5
        code, view = status(embedded)
        while role(view, victim)["state"] == "running":
            assert time.monotonic() < deadline, "the kill was not noticed"
            time.sleep(0.05)
            code, view = status(embedded)
        # The same view that shows the role down (a second call may already find it
        # restarted: its first back-off is short).
        assert code == 1  # a role is not running: the exit status says so
        delays.append(role(view, victim)["delay"])
        assert lb_answers(embedded)
    assert delays == sorted(delays)
    assert delays[-1] > delays[0]  # growing back-off
    assert {name: role(status(embedded)[1], name)["pid"] for name in others} == others
    wait_until_running(embedded, victim, 10)
    assert status(embedded)[0] == 0
    assert "killed by SIGKILL" in embedded.log_text()
