"""A browser client on `sipfleet up` as users start it (no config file): JsSIP in headless
Chromium registers over WSS (the embedded default's 127.0.0.1:5063, self-signed) and
calls a baresip phone on UDP; the call is set up and hung up through the LB.

Signalling only: the page rewrites the SDP so the phone (G.711, no DTLS-SRTP or ICE)
takes the offer and the browser takes the answer (tests/interop/browser/jssip_call.html).
Skipped only when chromium or npm is missing (scripts/setup.sh --test installs both and
JsSIP); JsSIP is installed from the npm registry into tests/interop/browser/ when it is not
there yet, and bundled for the browser with esbuild.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.chromium import CHROMIUM, headless
from tests.interop import phones
from tests.interop.agents.baresip import Baresip
from tests.interop.lab import Embedded
from tests.interop.phones import DOMAIN, PASSWORD, Phone, registered

AGENT = Baresip
NPM = shutil.which("npm")
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
STATE = re.compile(r'sipfleet-test: ([^"]*)"')
pytestmark = [
    pytest.mark.interop,
    pytest.mark.netns,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
    pytest.mark.skipif(NPM is None, reason="npm is not installed"),
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test page beside a browser bundle of JsSIP (npm ci when it is not installed)."""
    if not (BROWSER_DIR / "node_modules" / "jssip").is_dir():
        assert NPM is not None
        subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"], cwd=BROWSER_DIR, check=True, timeout=300
        )
    out = tmp_path_factory.mktemp("browser")
    esbuild = BROWSER_DIR / "node_modules" / ".bin" / "esbuild"
    subprocess.run(
        [
            str(esbuild),
            "node_modules/jssip/lib/JsSIP.js",
            "--bundle",
            "--format=iife",
            "--global-name=JsSIP",
            f"--outfile={out / 'jssip.js'}",
        ],
        cwd=BROWSER_DIR,
        check=True,
        capture_output=True,
        timeout=120,
    )
    shutil.copy(BROWSER_DIR / "jssip_call.html", out)
    return out / "jssip_call.html"


class Browser:
    """Headless Chromium showing one page; its console (Chromium's log) read for the
    page's "sipfleet-test:" states."""

    def __init__(self, cluster: Embedded, url: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "chromium.log"
        argv = [
            *headless(workdir / "profile"),
            "--ignore-certificate-errors",  # the embedded default's self-signed certificate
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--allow-loopback-in-peer-connection",  # a host candidate in the namespace
            "--allow-file-access-from-files",
            "--enable-logging=stderr",
            "--v=0",
            "--remote-debugging-port=0",  # keeps the headless browser open on the page
            url,
        ]
        with self.log.open("wb") as log:
            self.process = cluster.ns.popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def states(self) -> list[str]:
        return STATE.findall(self.log.read_text(errors="replace"))

    def wait_for(self, wanted: str, timeout: float = 20.0) -> list[str]:
        """Poll the log until a state starting with ``wanted`` shows; fail on a failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = self.states()
            if any(state.startswith(wanted) for state in states):
                return states
            failed = [s for s in states if "failed" in s]
            assert not failed, f"{failed}\n{self.tail()}"
            assert self.process.poll() is None, f"chromium exited\n{self.tail()}"
            time.sleep(0.1)
        raise AssertionError(f"no {wanted!r} within {timeout} s: {self.states()}\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def browser(
    phone_cluster: Embedded, page: Path, tmp_path: Path
) -> Iterator[Callable[..., Browser]]:
    """``browser(callee)``: JsSIP as alice over the embedded default's WSS, calling
    ``callee`` once registered (or only answering calls, without one)."""
    started: list[Browser] = []

    def start(callee: str = "") -> Browser:
        wss = f"wss://{phone_cluster.lb_host}:{phone_cluster.lb_port + 3}"
        query = {"ws": wss, "user": "alice", "password": PASSWORD, "domain": DOMAIN}
        url = f"{page.as_uri()}?{urlencode({**query, 'callee': callee})}"
        started.append(Browser(phone_cluster, url, tmp_path / f"browser{len(started)}"))
        return started[-1]

    yield start
    for one in started:
        one.stop()


@phones.needs_baresip
def test_jssip_registers_over_wss_and_calls_baresip(
    phone_cluster: Embedded, phone: Phone, browser: Callable[..., Browser]
) -> None:
    bob = registered(phone("bob"))
    at_bob = bob.mark()
    alice = browser("bob")
    alice.wait_for("registered")
    shown = phones.location(phone_cluster, "alice")
    assert ".invalid" in shown, shown  # the browser's made-up Contact host (RFC 7118)
    assert "transport=ws" in shown, shown

    bob.wait_incoming(since=at_bob)
    invite = phones.only(bob.requests("INVITE", sent=False, since=at_bob), "INVITE")
    record_routes = ", ".join(invite.headers.get("record-route", []))
    assert ";transport=wss>" in record_routes, record_routes  # the LB's side toward alice
    bob.accept()
    bob.wait_established(since=at_bob)
    alice.wait_for("confirmed")
    bob.wait_closed(since=at_bob)  # alice hung up a second after the call was confirmed
    assert alice.wait_for("ended")[-1].startswith("ended local")


@phones.needs_baresip
def test_baresip_calls_jssip_down_its_websocket(
    phone: Phone, browser: Callable[..., Browser]
) -> None:
    alice = browser()
    alice.wait_for("registered")
    bob = registered(phone("bob"))
    at_bob = bob.dial(f"sip:alice@{DOMAIN}")
    alice.wait_for("incoming")  # reached over its WSS flow: its Contact host is .invalid
    bob.wait_established(since=at_bob)
    alice.wait_for("confirmed")
    bob.hangup()
    assert alice.wait_for("ended")[-1].startswith("ended remote")
