"""Linphone's console client (Debian's linphone-cli: ``linphonec``) driven headless.

One process per account, each with a home directory of its own: its linphonerc (``-c``)
holds one proxy config (registrar and outbound proxy: the given LB address, over UDP or
TCP) and its auth info, as a user's configured client would; console commands (``call``,
``answer``, ``pause``, ``terminate``, ``unregister``, ...) are written to its standard
input. ``-d 6`` logs to standard output, where belle-sip prints every SIP message it sends
or receives, so tests compare what was sent with what arrived.

Two things kept linphonec (liblinphone 5.1) from ever listening in the lab:

* it stops starting the core when it cannot open its database
  (``$HOME/.local/share/linphone/linphone.db``; the directory is not created for it): the
  log ends at ``Unable to open linphone database``, no transport is started (``ports``:
  ``sip port = 0``) and every REGISTER fails with ``No listening point matching``. Each
  phone gets its own ``HOME`` with that directory.
* once started, it takes the network for reachable (``Local loopback network only !``),
  but its network monitor (``[sip] auto_net_state_mon``, on by default) looks every 5 s at
  the local address it would use towards the Internet and, that being a loopback one,
  declares the network down: transports closed, registration dropped. The lab's
  namespace gets a default route of its own (``give_default_route``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.interop.agents import SipTrace, TextAgent, message_end, parse_message
from tests.interop.lab import Namespace

# belle-sip's log of the messages of a channel:
#   "channel [0x..]: message sent to [UDP://127.0.0.1:5060], size: [519] bytes\n<message>"
#   "channel [0x..]: received [405] new bytes from [UDP://127.0.0.1:5060]:\n<bytes>"
SENT = re.compile(r"message sent to \[(UDP|TCP|TLS)://[^\]]*\], size: \[(\d+)\] bytes\r?\n")
RECEIVED = re.compile(r"received \[(\d+)\] new bytes from \[(UDP|TCP|TLS)://[^\]]*\]:\r?\n")
LISTENING = re.compile(r"Creating listening point \[\w+\] on \[sip:\S*transport=UDP\]")

CONFIG = """\
[sip]
sip_port=-1
sip_tcp_port=-1
sip_tls_port={tls_port}
default_proxy=0
inc_timeout=120
{keepalive}{tls}
[rtp]
audio_rtp_port={rtp_low}-{rtp_high}
video_rtp_port={video_low}-{video_high}

[video]
enabled=0
capture=0
display=0

[proxy_0]
reg_proxy=<sip:{proxy_host}:{proxy_port};transport={transport}>
reg_route=<sip:{proxy_host}:{proxy_port};transport={transport}>
reg_identity=sip:{user}@{domain}
reg_expires={regint}
reg_sendregister=1
publish=0

[auth_info_0]
username={user}
passwd={password}
domain={domain}
"""


def why_no_linphone() -> str | None:
    if shutil.which("linphonec") is None:
        return "linphonec is not installed (apt-get install linphone-cli)"
    return None


def linphone_version() -> str:
    out = subprocess.run(["linphonec", "-v"], capture_output=True, text=True, timeout=10)
    found = re.search(r"version:? *(\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "unknown"


ROUTE_LINK = "lphveth0"
ROUTE_ADDRESS = "198.51.100.1/24"  # TEST-NET-2: nothing answers there
ROUTE_GATEWAY = "198.51.100.254"


def give_default_route(ns: Namespace) -> None:
    """A default route in ``ns`` through a veth pair whose both ends stay in ``ns``.

    liblinphone (``[sip] auto_net_state_mon``, on by default; off, linphonec never declares
    the network reachable at all) looks every 5 s at the local address it would use towards
    the Internet and takes the network for down while that is a loopback one: it then
    closes its transports and drops its registration. A namespace with only ``lo`` has no
    other address, so this gives it one. Nothing is ever sent beyond: the peer end has no
    address and nothing forwards. The kernel here has no ``dummy`` link type.
    """
    if ns.run(["ip", "link", "show", ROUTE_LINK]).returncode == 0:
        return
    peer = ROUTE_LINK[:-1] + "1"
    for argv in (
        ["ip", "link", "add", ROUTE_LINK, "type", "veth", "peer", "name", peer],
        ["ip", "addr", "add", ROUTE_ADDRESS, "dev", ROUTE_LINK],
        ["ip", "link", "set", ROUTE_LINK, "up"],
        ["ip", "link", "set", peer, "up"],
        ["ip", "route", "add", "default", "via", ROUTE_GATEWAY, "dev", ROUTE_LINK],
    ):
        done = ns.run(argv)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns.name}: {done.stderr.strip()}")


def split_messages(data: str) -> tuple[list[str], str]:
    """The complete SIP messages at the start of ``data`` (a stream chunk: TCP may carry
    several, or a part of one), and what is left after them."""
    messages: list[str] = []
    while True:
        data = data.lstrip("\r\n")
        end = message_end(data)
        if end is None:
            return messages, data
        messages.append(data[:end])
        data = data[end:]


def parse_trace(text: str) -> list[SipTrace]:
    """Every SIP message belle-sip logged as sent or received in ``text``, in order."""
    heads = sorted(
        [(m, True) for m in SENT.finditer(text)] + [(m, False) for m in RECEIVED.finditer(text)],
        key=lambda pair: pair[0].start(),
    )
    found: list[SipTrace] = []
    pending: dict[str, str] = {}  # a stream's bytes that do not make a message yet
    for head, sent in heads:
        if sent:
            transport, size = head.group(1), int(head.group(2))
        else:
            size, transport = int(head.group(1)), head.group(2)
        if sent:
            # the log shows the message without the Content-Length of a bodiless one, so
            # it is shorter than the size it gives: read it up to its own end
            first, _ = split_messages(text[head.end() : head.end() + size])
            found += [parse_message(m, sent=True, transport=transport) for m in first[:1]]
            continue
        chunk = text[head.end() : head.end() + size]
        if len(chunk) < size:
            continue  # still being printed
        messages, pending[transport] = split_messages(pending.get(transport, "") + chunk)
        found += [parse_message(m, sent=False, transport=transport) for m in messages]
    return found


class Linphone(TextAgent):
    """One linphonec process for ``user@domain``, registering through ``proxy``."""

    NAME = "linphonec"
    QUIT = "quit"
    COMMANDS = {
        "dial": "call {uri}",
        "accept": "answer",
        "hangup": "terminate",
        "hold": "pause",
        "resume": "resume",
        "unregister": "unregister",
    }
    RTP_BASE = 40000
    TAIL_CHARS = 8000

    def __init__(self, *args: Any, keepalive_ms: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keepalive_ms = keepalive_ms  # None: liblinphone's default (30 s); 0: none

    @classmethod
    def prepare_namespace(cls, ns: Namespace) -> None:
        give_default_route(ns)

    # -- process ---------------------------------------------------------------------------

    def write_config(self) -> Path:
        # liblinphone's data directory: without it the core never starts its transports
        (self.dir / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        rc = self.dir / "linphonerc"
        rc.write_text(
            CONFIG.format(
                user=self.user,
                domain=self.domain,
                password=self.password,
                transport=self.transport,
                proxy_host=self.proxy[0],
                proxy_port=self.proxy[1],
                regint=self.regint,
                keepalive=(
                    "" if self.keepalive_ms is None else f"keepalive_period={self.keepalive_ms}\n"
                ),
                tls="" if self.trusted_ca is None else f"root_ca={self.trusted_ca}\n",
                tls_port=-1 if self.transport == "tls" else 0,  # -1: any port; 0: none
                rtp_low=self.rtp_base,
                rtp_high=self.rtp_base + 49,
                video_low=self.rtp_base + 50,
                video_high=self.rtp_base + 99,
            )
        )
        return rc

    def start(self) -> Linphone:
        rc = self.write_config()
        env = dict(os.environ, HOME=str(self.dir))
        self._spawn(["linphonec", "-c", str(rc), "-d", "6"], cwd=self.dir, env=env)
        self.expect(LISTENING.pattern, self.START_TIMEOUT)
        self.expect(r"linphonec> ", self.START_TIMEOUT)
        # no sound card in the lab: play and record files (none given: silence)
        self.command("soundcard use files")
        return self

    def network_went_down(self) -> bool:
        """Whether liblinphone took the network for down at some point (then it closed its
        transports and dropped its registration: see ``give_default_route``)."""
        return self.saw(r"SIP network reachability state is now \[DOWN\]")

    def trouble(self) -> str | None:
        return "liblinphone took the network for down" if self.network_went_down() else None

    # -- what the tests do -----------------------------------------------------------------

    def _registration(self, state: str) -> str:
        return rf"identity \[{re.escape(self.aor)}\] moving from state \[\w+\] to \[{state}\]"

    def wait_registered(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(self._registration("LinphoneRegistrationOk"), timeout, since=since)

    def wait_register_failed(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(self._registration("LinphoneRegistrationFailed"), timeout, since=since)

    def wait_unregistered(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.expect(self._registration("LinphoneRegistrationCleared"), timeout, since=since)

    def wait_call_state(self, state: str, timeout: float | None = None, *, since: int = 0) -> str:
        """A call's move to ``state`` (liblinphone's name without ``LinphoneCall``:
        IncomingReceived, Connected, StreamsRunning, Paused, End, Error, Released...)."""
        return self.expect(
            rf"moving from state LinphoneCall\w+ to LinphoneCall{state}\b", timeout, since=since
        )

    def wait_incoming(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.wait_call_state("IncomingReceived", timeout, since=since)

    def wait_established(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.wait_call_state("StreamsRunning", timeout, since=since)

    def was_established(self, *, since: int = 0) -> bool:
        return self.saw(r"to LinphoneCallConnected\b", since=since)

    def wait_closed(self, timeout: float | None = None, *, since: int = 0) -> str:
        return self.wait_call_state("(?:End|Error)", timeout, since=since)

    def wait_held(self, *, since: int = 0) -> None:
        self.wait_call_state("Paused", since=since)

    def wait_held_by_remote(self, *, since: int = 0) -> None:
        self.wait_call_state("PausedByRemote", since=since)

    # -- SIP trace -------------------------------------------------------------------------

    def parse_trace(self, text: str) -> list[SipTrace]:
        return parse_trace(text)
