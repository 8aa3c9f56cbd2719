"""The balancer under overload, in-process on real sockets (roles/lb.compose): new
requests from clients get a stateless 503, everything under way is relayed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from sipfleet.config import config_from_dict
from sipfleet.core.lb.balancer import Balancer
from sipfleet.roles.lb import WorkerSockets, compose, sides_of
from sipfleet.sip import Request, Response
from sipfleet.storage import LbTarget, Storage
from sipfleet.transport.sockets import bind_all
from tests.transport.helpers import UdpClient

SUSTAINED = (0.0, 1.0)  # two checks a second apart, the backlog full at both


@dataclass
class Lb:
    balancer: Balancer
    address: tuple[str, int]


@asynccontextmanager
async def lb_before(proxy: UdpClient, **sections: dict[str, object]) -> AsyncIterator[Lb]:
    """An LB worker composed in-process with ``proxy`` as its proxy pool; ``sections``
    add to its config (``edge={...}``)."""
    config = config_from_dict(
        {
            "node": {"cluster_secret": "balancer-test"},
            "lb": {"listen": ["udp:127.0.0.1:0"], "keepalive": False},
            **sections,
        }
    )
    sockets = bind_all(sides_of(config).listen)
    control = bind_all(sides_of(config).listen)[0]
    own = WorkerSockets(0, [*sockets, control], {0: control.getsockname()[:2]})
    worker = compose(config, cast(Storage, None), own, 1)
    worker.pools.update([LbTarget(1, "proxy", f"sip:{proxy.host}:{proxy.port}", 1, "active")])
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
