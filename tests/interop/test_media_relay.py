"""Issue #19: two phones behind two different NATs hear each other only through a relay.

The media lab (tests/interop/medialab.py): two baresip phones, both at 10.0.1.2 in two
homes behind two masquerading NATs, and `sipfleet up --listen 203.0.113.10:5060` (README,
no config file) on the public segment. Alice calls Bob, Bob answers, they send G.711
(silence from a WAV) for three seconds' worth of packets, Alice hangs up.

What a user would check, and what is asserted: the address each phone was told to send
its audio to (the c= of the SDP it received), and how many RTP packets reached each
phone from the network (nftables counters in the phone's own namespace).

* No relay running (the proxy forwards the SDP as the phones wrote it): each phone is
  told to send to 10.0.1.2, its own address, and hears nothing.
* rtpengine running in the server's namespace at 127.0.0.1:2223 (the product's default
  relay; ng control): each SDP names 203.0.113.10 and the audio flows both ways.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.lab import Embedded, embedded_cluster
from tests.interop.medialab import (
    NG_LIST,
    NG_PING,
    NO_CALLS,
    PHONE_IP,
    SERVER_IP,
    AudioTarget,
    MediaLab,
    RtpMeter,
    Traffic,
    audio_target,
    media_lab,
    meter_until,
    ng_reply_until,
)
from tests.interop.natlab import why_no_natlab
from tests.interop.phones import DOMAIN, PASSWORD, add_subscribers, establish, hang_up
from tests.rtpengine import Rtpengine, running_rtpengine, why_no_rtpengine

pytestmark = [
    pytest.mark.interop,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(why_no_natlab() is not None, reason=why_no_natlab() or ""),
    pytest.mark.skipif(why_no_baresip() is not None, reason=why_no_baresip() or ""),
]
needs_rtpengine = pytest.mark.skipif(
    why_no_rtpengine() is not None, reason=why_no_rtpengine() or ""
)

RTP_RANGES = {"alice": 20000, "bob": 20200}  # first port of each phone's 100
RELAY_NG = ("127.0.0.1", 2223)  # where the product looks for a relay by default
CALL_PACKETS = 150  # G.711 at 20 ms: 50 packets a second, three seconds of talk
HEARD_PACKETS = 100  # two seconds of it: the relay may take a moment to learn a phone
TALK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CallReport:
    """What the two phones saw of one call."""

    offer_at_bob: AudioTarget  # where Bob was told to send his audio
    answer_at_alice: AudioTarget  # where Alice was told to send hers
    traffic: dict[str, Traffic]  # RTP each phone sent and received, by user

    def explain(self) -> str:
        return (
            f"Bob was told to send to {self.offer_at_bob}, Alice to {self.answer_at_alice};"
            f" RTP packets: {self.traffic}"
        )


def everyone_talked(readings: dict[str, Traffic]) -> bool:
    return all(t.sent >= CALL_PACKETS for t in readings.values())


def everyone_heard(readings: dict[str, Traffic]) -> bool:
    return everyone_talked(readings) and all(t.received >= HEARD_PACKETS for t in readings.values())


def phones(lab: MediaLab, cluster: Embedded, workdir: Path) -> tuple[Baresip, Baresip]:
    """Alice in home A and Bob in home B (not started), both on the public LB."""
    alice, bob = (
        Baresip(ns, workdir, user, DOMAIN, PASSWORD, proxy=(cluster.lb_host, cluster.lb_port),
                local_ip=PHONE_IP, rtp_base=RTP_RANGES[user])
        for ns, user in ((lab.phone_a, "alice"), (lab.phone_b, "bob"))
    )  # fmt: skip
    return alice, bob


def call_across_the_nats(
    lab: MediaLab, cluster: Embedded, workdir: Path, enough: Callable[[dict[str, Traffic]], bool]
) -> CallReport:
    """Alice calls Bob, Bob answers; the call lasts until ``enough`` says so of the RTP
    counters (at most TALK_TIMEOUT_S), then Alice hangs up."""
    meters = {
        "alice": RtpMeter(lab.phone_a, RTP_RANGES["alice"], RTP_RANGES["alice"] + 99),
        "bob": RtpMeter(lab.phone_b, RTP_RANGES["bob"], RTP_RANGES["bob"] + 99),
    }
    alice, bob = phones(lab, cluster, workdir)
    with alice, bob:
        alice.wait_registered()
        bob.wait_registered()
        at_alice, at_bob = establish(alice, bob)
        offer = bob.wait_message("INVITE", sent=False, since=at_bob)
        answer = alice.wait_message("INVITE", sent=False, status=200, since=at_alice)
        traffic = meter_until(meters, enough, TALK_TIMEOUT_S)
        hang_up(alice, bob)
    return CallReport(audio_target(offer.body), audio_target(answer.body), traffic)


def public_cluster(stack: ExitStack, lab: MediaLab, workdir: Path) -> Embedded:
    """`sipfleet up --listen SERVER_IP:5060` (README, no config file) in the server's
    namespace, with alice and bob; stopped when ``stack`` closes."""
    listen = ("--listen", f"{SERVER_IP}:5060")
    cluster = stack.enter_context(
        embedded_cluster(workdir / "up", "media", ns=lab.server, up_args=listen)
    )
    add_subscribers(cluster, ("alice", "bob"))
    return cluster


def relay(stack: ExitStack, lab: MediaLab, workdir: Path) -> Rtpengine:
    """rtpengine in the server's namespace, media on SERVER_IP, ng where the product
    looks by default; answering pings before this returns."""
    started = stack.enter_context(
        running_rtpengine(
            workdir / "rtpengine", interface=SERVER_IP, ng_host=RELAY_NG[0],
            ng_port=RELAY_NG[1], wrap=lab.server.argv, check_ready=False,
        )
    )  # fmt: skip
    if "pong" not in ng_reply_until(lab.server, *RELAY_NG, NG_PING, "pong", timeout=10):
        raise RuntimeError(f"rtpengine does not answer a ping:\n{started.log_text()[-2000:]}")
    return started


@pytest.fixture
def lab() -> Iterator[MediaLab]:
    with media_lab("mr") as made:
        yield made


def test_without_a_relay_natted_phones_hear_nothing(lab: MediaLab, tmp_path: Path) -> None:
    with ExitStack() as stack:
        cluster = public_cluster(stack, lab, tmp_path)
        report = call_across_the_nats(lab, cluster, tmp_path, everyone_talked)
        log = cluster.log_text()[-3000:]
    print(report.explain())  # shown with -rP
    assert everyone_talked(report.traffic), f"{report.explain()}\n{log}"
    # each phone is told to send to the other's private address, which is its own
    assert report.offer_at_bob.address == PHONE_IP, report.explain()
    assert report.answer_at_alice.address == PHONE_IP, report.explain()
    assert all(t.received == 0 for t in report.traffic.values()), report.explain()


@needs_rtpengine
def test_through_the_relay_natted_phones_hear_each_other(lab: MediaLab, tmp_path: Path) -> None:
    with ExitStack() as stack:
        rtpengine = relay(stack, lab, tmp_path)
        cluster = public_cluster(stack, lab, tmp_path)
        report = call_across_the_nats(lab, cluster, tmp_path, everyone_heard)
        calls_left = ng_reply_until(lab.server, *RELAY_NG, NG_LIST, NO_CALLS, timeout=5)
        evidence = (
            f"{report.explain()}\n--- rtpengine ---\n{rtpengine.log_text()[-4000:]}"
            f"\n--- sipfleet up ---\n{cluster.log_text()[-3000:]}"
        )
    print(report.explain())  # shown with -rP
    assert report.offer_at_bob.address == SERVER_IP, evidence
    assert report.answer_at_alice.address == SERVER_IP, evidence
    assert everyone_heard(report.traffic), evidence
    # the hang-up ended the call at the relay too: its ports are free again
    assert NO_CALLS in calls_left, f"calls still at the relay: {calls_left!r}\n{evidence}"
