"""The balancer under overload, in-process on real sockets (roles/lb.compose): new
requests from clients get a stateless 503, everything under way is relayed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from sipfleet.config import config_from_dict
from sipfleet.config.listen import ListenAddress
from sipfleet.core.lb.balancer import Balancer
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.sip import Request, Response
from sipfleet.storage import LbTarget, Storage
from sipfleet.transport.sockets import bind_all
from tests.integration.harness import free_port
from tests.transport.helpers import UdpClient

SUSTAINED = (0.0, 1.0)  # two checks a second apart, the backlog full at both


@dataclass
class Lb:
    balancer: Balancer
    address: tuple[str, int]


@asynccontextmanager
async def lb_before(
    proxy: UdpClient, registrar: UdpClient | None = None, **sections: dict[str, object]
) -> AsyncIterator[Lb]:
    """An LB worker composed in-process with ``proxy`` as its proxy pool (and
    ``registrar`` as its registrar pool, the LB then on a port of its own, so that it
    knows its Via in responses); ``sections`` add to its config (``edge={...}``)."""
    port = 0 if registrar is None else free_port()
    config = config_from_dict(
        {
            "node": {"cluster_secret": "balancer-test"},
            "lb": {"listen": [f"udp:127.0.0.1:{port}"], "keepalive": False},
            **sections,
        }
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all([ListenAddress("udp", "127.0.0.1", 0)])[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, None), own, 1)
    targets = [LbTarget(1, "proxy", f"sip:{proxy.host}:{proxy.port}", 1, "active")]
    if registrar is not None:
        uri = f"sip:{registrar.host}:{registrar.port}"
        targets.append(LbTarget(2, "registrar", uri, 1, "active"))
    worker.pools.update(targets)
    async with worker.endpoint:
        balancer = worker.endpoint.handler
        assert isinstance(balancer, Balancer)
        yield Lb(balancer, sockets[0].getsockname()[:2])


def invite(phone: UdpClient, n: int, to_tag: str = "", extra: str = "") -> bytes:
    method = "BYE" if to_tag else "INVITE"
    return (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bK-bal-{n}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        f"To: <sip:bob@example.com>{to_tag}\r\n"
        f"Call-ID: balancer-{n}\r\n"
        f"CSeq: 1 {method}\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


async def test_while_overloaded_new_requests_get_503_and_dialogs_go_on() -> None:
    phone, proxy = UdpClient(), UdpClient()
    async with lb_before(proxy) as lb:
        phone.send(invite(phone, 1), lb.address)
        assert isinstance(await proxy.recv_message(), Request)  # relayed, not overloaded
        for second in SUSTAINED:
            lb.balancer.overload.observe(second, 0.0, 1 << 30)
        phone.send(invite(phone, 2), lb.address)
        refused = await phone.recv_message()
        assert isinstance(refused, Response)
        assert refused.status == 503
        assert refused.header("retry-after") == "5"
        phone.send(invite(phone, 3, to_tag=";tag=b1"), lb.address)  # in a dialog: relayed
        bye = await proxy.recv_message()
        assert isinstance(bye, Request)
        assert bye.method == "BYE"
        answering = 'Proxy-Authorization: Digest username="alice", realm="example.com"\r\n'
        phone.send(invite(phone, 4, extra=answering), lb.address)  # completes an exchange
        relayed = await proxy.recv_message()
        assert isinstance(relayed, Request)
        assert relayed.call_id == "balancer-4"
        assert lb.balancer.shed == 1


async def test_past_the_answer_budget_new_requests_are_dropped() -> None:
    phone, proxy = UdpClient(), UdpClient()
    async with lb_before(proxy) as lb:
        for second in SUSTAINED:
            lb.balancer.overload.observe(second, 0.0, 1 << 30)
        for n in range(250):  # the budget starts with 200 answers
            phone.send(invite(phone, n), lb.address)
        await asyncio.sleep(0.3)
        assert lb.balancer.shed == 200
        assert lb.balancer.shed_dropped == 50


# -- RFC 7339: a registrar asks the LB to refuse new REGISTERs for it ---------------------------


def register(phone: UdpClient, n: int, extra: str = "") -> bytes:
    return (
        "REGISTER sip:example.com SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {phone.host}:{phone.port};branch=z9hG4bK-reg-{n}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.com>;tag=a1\r\n"
        "To: <sip:alice@example.com>\r\n"
        f"Call-ID: oc-{n}\r\n"
        f"CSeq: {n} REGISTER\r\n"
        f"Contact: <sip:alice@{phone.host}:{phone.port}>\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def answer_asking(request: Request, oc: str) -> bytes:
    """The registrar's 401, our Via carrying its overload control parameters."""
    vias = request.header_values("via")
    assert vias[0].endswith(";oc")  # the LB writes its "oc" last: given a value here
    lines = [f"Via: {vias[0][: -len(';oc')]}{oc}", *(f"Via: {via}" for via in vias[1:])]
    return (
        "SIP/2.0 401 Unauthorized\r\n"
        + "\r\n".join(lines)
        + f"\r\nFrom: {request.header('from')}\r\nTo: {request.header('to')};tag=r1\r\n"
        f"Call-ID: {request.call_id}\r\nCSeq: {request.header('cseq')}\r\n"
        'WWW-Authenticate: Digest realm="example.com", nonce="n1"\r\n'
        "Content-Length: 0\r\n\r\n"
    ).encode()


ASK_ALL = ';oc=100;oc-algo="loss";oc-validity=5000;oc-seq=1.000'


async def registered_through(lb: Lb, phone: UdpClient, registrar: UdpClient) -> Request:
    """A new REGISTER from ``phone``, as the registrar gets it from the LB."""
    phone.send(register(phone, 1), lb.address)
    relayed = await registrar.recv_message()
    assert isinstance(relayed, Request)
    return relayed


async def test_a_register_says_the_lb_takes_part_and_the_registrar_can_ask_it_to_refuse() -> None:
    phone, registrar = UdpClient(), UdpClient()
    async with lb_before(UdpClient(), registrar) as lb:
        relayed = await registered_through(lb, phone, registrar)
        assert relayed.top_via.params.keys() >= {"oc"}  # our Via: "oc" (RFC 7339 §5.1)
        registrar.send(answer_asking(relayed, ASK_ALL), lb.address)
        challenge = await phone.recv_message()
        assert isinstance(challenge, Response)
        assert challenge.status == 401
        assert "oc" not in challenge.header("via")  # our Via went, with what it carried

        phone.send(register(phone, 2), lb.address)  # a new exchange: refused here
        refused = await phone.recv_message()
        assert isinstance(refused, Response)
        assert (refused.status, refused.reason, refused.header("retry-after")) == (
            503,
            "Overloaded",
            "5",
        )
        await registrar.nothing(0.1)
        credentials = 'Authorization: Digest username="alice", realm="example.com"\r\n'
        phone.send(register(phone, 3, credentials), lb.address)  # answers the challenge
        assert isinstance(await registrar.recv_message(), Request)
        assert (lb.balancer.loss.refused, lb.balancer.loss.refused_own) == (1, 0)


async def test_a_registrars_401_is_relayed_from_its_bytes() -> None:
    phone, registrar = UdpClient(), UdpClient()
    async with lb_before(UdpClient(), registrar) as lb:
        relayed = await registered_through(lb, phone, registrar)
        registrar.send(answer_asking(relayed, ""), lb.address)  # a 401 asking for nothing
        challenge = await phone.recv_message()
        assert isinstance(challenge, Response)
        assert challenge.status == 401
        fast = lb.balancer.endpoint.fast
        assert fast is not None
        assert fast.responses == 1


async def test_only_a_member_of_the_cluster_can_ask_the_lb_to_refuse() -> None:
    phone, registrar, stranger = UdpClient(), UdpClient(), UdpClient()
    async with lb_before(UdpClient(), registrar) as lb:
        relayed = await registered_through(lb, phone, registrar)
        stranger.send(answer_asking(relayed, ASK_ALL), lb.address)  # the right Via, wrong source
        await phone.recv_message()
        phone.send(register(phone, 2), lb.address)
        assert isinstance(await registrar.recv_message(), Request)  # relayed: not refused
        assert lb.balancer.loss.refused == 0


OWN_SHARE_CHECKS = (0.0, 0.1, 0.2, 0.3)  # the backlog full for 0.3 s: a share refused, not yet all


async def test_the_lbs_own_backlog_refuses_a_share_of_new_registers_at_once() -> None:
    phone, registrar = UdpClient(), UdpClient()
    async with lb_before(UdpClient(), registrar) as lb:
        for second in OWN_SHARE_CHECKS:
            lb.balancer.observe(second, 0.0, 1 << 30)
        assert not lb.balancer.overload.overloaded
        for n in range(40):
            phone.send(register(phone, n), lb.address)
        refused, relayed = await received(phone), await received(registrar)
        assert refused == lb.balancer.loss.refused == lb.balancer.loss.refused_own
        assert relayed == 40 - refused
        assert 2 <= refused <= 20  # about a fifth


async def test_while_its_share_is_cutting_the_lb_refuses_not_everything() -> None:
    """Twice the maximum of REGISTERs: the share answers the excess; only a backlog it
    cannot relieve (its floor reached) makes the LB refuse every new request."""
    async with lb_before(UdpClient(), UdpClient()) as lb:
        checks = [round(0.1 * n, 1) for n in range(31)]
        for second in checks[:11]:  # full for 1 s: the share cut 8 times, above its floor
            lb.balancer.observe(second, 0.0, 1 << 30)
        assert 0.05 < lb.balancer.own_share.admitted < 0.2
        assert not lb.balancer.overload.overloaded
        for second in checks[11:]:  # full for 2 s more: the floor, then 0.5 s of it
            lb.balancer.observe(second, 0.0, 1 << 30)
        assert lb.balancer.own_share.admitted == lb.balancer.own_share.floor
        assert lb.balancer.overload.overloaded


async def test_a_backlog_of_what_the_edge_guard_drops_refuses_no_phone() -> None:
    """One source's flood fills the LB's backlog; the guard drops it for little: refusing
    other phones' REGISTERs would not shorten it (tests/interop/test_abuse.py)."""
    phone, registrar, flooder = UdpClient(), UdpClient(), UdpClient("127.0.0.66")
    edge = {"rate_per_s": 1, "burst": 1, "exempt": [phone.host]}  # only the flood is limited
    async with lb_before(UdpClient(), registrar, edge=edge) as lb:
        for check, second in enumerate(OWN_SHARE_CHECKS):
            for n in range(30):
                flooder.send(register(flooder, 1000 * check + n), lb.address)
            await received(registrar)  # what passes the guard, read before the check
            lb.balancer.observe(second, 0.0, 1 << 30)
        assert lb.balancer.guard is not None
        assert lb.balancer.guard.rate_dropped >= 100
        assert not lb.balancer.loss  # no share to refuse
        for n in range(40):
            phone.send(register(phone, n), lb.address)
        assert await received(registrar) == 40
        assert lb.balancer.loss.refused == 0


async def received(client: UdpClient) -> int:
    """How many datagrams ``client`` gets before 0.3 s pass without one."""
    count = 0
    with contextlib.suppress(TimeoutError):
        while True:
            await client.recv(timeout=0.3)
            count += 1
    return count
