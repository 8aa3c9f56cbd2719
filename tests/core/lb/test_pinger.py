"""Rebuilding the keepalive table at start-up: each LB, and each worker in it, takes back
exactly its own flows, so no flow is pinged twice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipfleet.core.lb.pinger import Keepalives
from sipfleet.sip.flow import Flow
from sipfleet.storage.model import LiveFlow
from tests.core.lb.messages import TOKENS, one_side


@dataclass
class FakeLocation:
    flows: list[LiveFlow]
    queries: int = 0

    async def live_flows(self) -> list[LiveFlow]:
        self.queries += 1
        return self.flows


@dataclass
class FakeStorage:
    location: FakeLocation


@dataclass
class FakeEndpoint:
    worker_index: int
    siblings: dict[int, Any] = field(default_factory=dict)


def keepalives(lb_id: int, worker: int, workers: int) -> Keepalives:
    return Keepalives(
        FakeEndpoint(worker),  # type: ignore[arg-type]
        one_side(),
        TOKENS,
        lb_id=lb_id,
        workers=workers,
        interval=20.0,
        method="options",
        enabled=True,
        now=lambda: 0.0,
    )


def live(flow: Flow, expires: int = 5000) -> LiveFlow:
    return LiveFlow(TOKENS.encode(flow), None, None, expires)


async def test_every_flow_is_taken_back_by_exactly_one_worker_of_its_lb() -> None:
    flows = [
        live(Flow("udp", "192.0.2.1", 5060 + n, 0, worker, True, lb))
        for n, (lb, worker) in enumerate([(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (1, 3)])
    ]
    flows.append(live(Flow("tcp", "192.0.2.9", 5060, 4, 0, True, 1)))  # its connection is gone
    flows.append(LiveFlow("not-a-token", None, None, 5000))
    storage = FakeStorage(FakeLocation(flows))
    taken: dict[str, list[tuple[int, int]]] = {}
    for lb in (1, 2):
        for worker in range(2):  # two workers now, though tokens name up to four
            pinger = keepalives(lb, worker, workers=2)
            await pinger.restore(storage)  # type: ignore[arg-type]
            for token in pinger.table.by_token:
                taken.setdefault(token, []).append((lb, worker))
    assert storage.location.queries == 4  # one query per worker, at start only
    udp = [f.flow for f in flows[:6]]
    assert sorted(taken) == sorted(udp)  # every UDP flow, none twice, no TCP, no junk
    assert all(len(owners) == 1 for owners in taken.values())
    assert taken[udp[3]] == [(2, 0)]
    assert taken[udp[5]] == [(1, 1)]  # worker 3 of four is now worker 1 of two
