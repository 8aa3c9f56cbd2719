"""A media lab: two phones behind two masquerading NATs, a server on a public segment.

Six network namespaces, all made (and deleted) here::

    phone A 10.0.1.2 -- 10.0.1.1 [nat A: masquerade] 203.0.113.1 --+
                                                                    |
                                           [public: bridge br0] ----+---- 203.0.113.10 server
                                                                    |
    phone B 10.0.1.2 -- 10.0.1.1 [nat B: masquerade] 203.0.113.2 --+

Both homes use the same private range, as most home routers do. That is the case that
makes a private address in an SDP worse than useless: phone A reading "10.0.1.2" in B's
answer sends its audio into its own LAN (to itself), never towards B. Only an address
that someone on the public segment owns (the relay's) can carry media between them.

The public segment is a bridge in a namespace of its own (a switch: it routes nothing).
The server namespace has no route to 10.0.1.0/24; the NATs have none to each other's LAN.

What reaches a phone is counted by nftables inside the phone's namespace (``RtpMeter``):
UDP to the even ports of its RTP range (RTP; RTCP uses the odd port above) arriving on
its LAN interface, and what it sent from them, on any interface.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.interop.lab import Namespace
from tests.interop.natlab import NAT_RULES

PRIVATE_PREFIX = 24
PHONE_IP = "10.0.1.2"  # in both homes
HOME_GATEWAY_IP = "10.0.1.1"  # each NAT's LAN side
NAT_A_PUBLIC_IP = "203.0.113.1"
NAT_B_PUBLIC_IP = "203.0.113.2"
SERVER_IP = "203.0.113.10"
PUBLIC_PREFIX = 24


@dataclass
class MediaLab:
    phone_a: Namespace  # PHONE_IP behind nat_a
    nat_a: Namespace
    phone_b: Namespace  # PHONE_IP behind nat_b
    nat_b: Namespace
    public: Namespace  # the bridge only
    server: Namespace  # SERVER_IP


def check(ns: Namespace, argv: list[str], stdin: str | None = None) -> str:
    """``argv`` in ``ns``; its output, or RuntimeError with it when it failed."""
    done = ns.run(argv, input=stdin)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns.name}: {done.stdout}{done.stderr}")
    return str(done.stdout)


def veth(ns: Namespace, name: str, peer_ns: Namespace, peer_name: str) -> None:
    """A veth pair made inside the namespaces: no name ever exists on the host."""
    argv = ["ip", "-n", ns.name, "link", "add", name, "type", "veth",
            "peer", "name", peer_name, "netns", peer_ns.name]  # fmt: skip
    subprocess.run(argv, check=True, timeout=10, capture_output=True)


def address(ns: Namespace, device: str, cidr: str) -> None:
    check(ns, ["ip", "addr", "add", cidr, "dev", device])
    check(ns, ["ip", "link", "set", device, "up"])


def plug_into_bridge(public: Namespace, port: str) -> None:
    check(public, ["ip", "link", "set", port, "master", "br0"])
    check(public, ["ip", "link", "set", port, "up"])


def home(
    phone: Namespace, nat: Namespace, public: Namespace, nat_public_ip: str, bridge_port: str
) -> None:
    """One home: the phone on the NAT's LAN, the NAT's public side on the bridge."""
    veth(phone, "eth0", nat, "lan0")
    veth(nat, "pub0", public, bridge_port)
    address(phone, "eth0", f"{PHONE_IP}/{PRIVATE_PREFIX}")
    address(nat, "lan0", f"{HOME_GATEWAY_IP}/{PRIVATE_PREFIX}")
    address(nat, "pub0", f"{nat_public_ip}/{PUBLIC_PREFIX}")
    plug_into_bridge(public, bridge_port)
    check(phone, ["ip", "route", "add", "default", "via", HOME_GATEWAY_IP])
    check(nat, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    check(nat, ["nft", "-f", "-"], stdin=NAT_RULES)  # masquerade what leaves by pub0


@contextmanager
def media_lab(name_hint: str) -> Iterator[MediaLab]:
    """The six namespaces, wired and routed; all deleted afterwards, whatever happens."""
    with ExitStack() as stack:

        def namespace(suffix: str) -> Namespace:
            return stack.enter_context(Namespace(f"{name_hint}{suffix}"))

        lab = MediaLab(
            phone_a=namespace("pa"),
            nat_a=namespace("na"),
            phone_b=namespace("pb"),
            nat_b=namespace("nb"),
            public=namespace("pu"),
            server=namespace("sv"),
        )
        check(lab.public, ["ip", "link", "add", "br0", "type", "bridge"])
        check(lab.public, ["ip", "link", "set", "br0", "up"])
        home(lab.phone_a, lab.nat_a, lab.public, NAT_A_PUBLIC_IP, "home_a")
        home(lab.phone_b, lab.nat_b, lab.public, NAT_B_PUBLIC_IP, "home_b")
        veth(lab.server, "eth0", lab.public, "server")
        address(lab.server, "eth0", f"{SERVER_IP}/{PUBLIC_PREFIX}")
        plug_into_bridge(lab.public, "server")
        yield lab


# -- counting RTP in a phone's namespace ---------------------------------------------------

METER_TABLE = "sipfleet_rtp_meter"
METER_RULES = """
table inet {table} {{
    counter sent {{ }}
    counter received {{ }}
    chain output {{
        type filter hook output priority filter; policy accept;
        udp sport {low}-{high} udp sport & 1 == 0 counter name "sent"
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "eth0" udp dport {low}-{high} udp dport & 1 == 0 counter name "received"
    }}
}}
"""


@dataclass(frozen=True)
class Traffic:
    """RTP packets one phone sent and received (from the network, not from itself)."""

    sent: int
    received: int


class RtpMeter:
    """nftables counters in a phone's namespace on its RTP ports ``low``-``high``.

    "received" counts only what arrives on eth0 (the LAN): a phone that sends to its own
    address (the other phone's private address, in this lab) loops back over lo, and
    that is not audio from the other phone."""

    def __init__(self, ns: Namespace, low: int, high: int) -> None:
        self.ns = ns
        check(
            ns, ["nft", "-f", "-"], stdin=METER_RULES.format(table=METER_TABLE, low=low, high=high)
        )

    def _packets(self, counter: str) -> int:
        listed = json.loads(
            check(self.ns, ["nft", "-j", "list", "counter", "inet", METER_TABLE, counter])
        )
        return next(
            int(item["counter"]["packets"]) for item in listed["nftables"] if "counter" in item
        )

    def read(self) -> Traffic:
        return Traffic(sent=self._packets("sent"), received=self._packets("received"))


def meter_until(
    meters: dict[str, RtpMeter], enough: Callable[[dict[str, Traffic]], bool], timeout: float
) -> dict[str, Traffic]:
    """The meters' readings once ``enough`` says so, or the last ones after ``timeout`` s
    (the test's assertions then say what was missing)."""
    deadline = time.monotonic() + timeout
    while True:
        readings = {name: meter.read() for name, meter in meters.items()}
        if enough(readings) or time.monotonic() > deadline:
            return readings
        time.sleep(0.2)


# -- asking rtpengine, from inside its namespace (the only place it listens) ---------------

# one ng request (bencoded dict in argv[3]) with a fresh cookie: rtpengine answers a
# repeated cookie from its cache, which would make a poll see its first answer forever
NG_REQUEST = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.3)
cookie = os.urandom(4).hex().encode()
s.sendto(cookie + b" " + sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
sys.stdout.write(s.recv(65535).decode("latin-1"))
"""
NG_PING = "d7:command4:pinge"
NG_LIST = "d7:command4:liste"
NO_CALLS = "5:callsle"  # what a "list" reply holds when the relay has no call


def ng_reply(ns: Namespace, host: str, port: int, request: str) -> str:
    """rtpengine's reply to a bencoded ng ``request`` at host:port in ``ns`` ("": none)."""
    done = ns.run([sys.executable, "-c", NG_REQUEST, host, str(port), request], timeout=5)
    return str(done.stdout) if done.returncode == 0 else ""


def ng_reply_until(
    ns: Namespace, host: str, port: int, request: str, expected: str, timeout: float
) -> str:
    """rtpengine's reply to ``request`` once it holds ``expected``, or its last reply
    after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while expected not in (reply := ng_reply(ns, host, port, request)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return reply


# -- SDP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioTarget:
    """Where an SDP asks for its audio to be sent."""

    address: str
    port: int


def audio_target(sdp: str) -> AudioTarget:
    """The connection address (the audio stream's own c=, else the session's) and port
    of the first m=audio line."""
    session, _, media = sdp.partition("\nm=audio ")
    port = re.match(r"(\d+)", media)
    assert port is not None, f"no m=audio in the SDP:\n{sdp}"
    audio = media.split("\nm=", 1)[0]
    connection = re.search(r"^c=IN IP4 (\S+)", audio, re.M) or re.search(
        r"^c=IN IP4 (\S+)", session, re.M
    )
    assert connection is not None, f"no c= line in the SDP:\n{sdp}"
    return AudioTarget(connection.group(1), int(port.group(1)))
