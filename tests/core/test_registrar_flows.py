"""The registrar with RFC 5626 flows (on SQLite, without sockets): one phone registering
two flows with the same Contact, as baresip does with two outbound proxies on one
transport, keeps both; the 200 lists each binding with its own expires and reg-id."""

from __future__ import annotations

from sipfleet.core.registrar import Registrar
from sipfleet.sip import Request, Response, parse_message
from sipfleet.storage import Aor, Storage
from tests.core.test_registrar import DOMAIN, PEER, FakeClock, config, settle
from tests.core.test_registrar import storage as storage  # the fixture: SQLite, migrated
from tests.core.test_registrar_overload import SentBytes

PHONE = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
CONTACT = "sip:alice@192.0.2.2:5060"


def register(call_id: str, cseq: int, contact: str) -> Request:
    text = (
        f"REGISTER sip:{DOMAIN} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.2:5060;branch=z9hG4bK-{call_id}-{cseq}\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=t\r\n"
        f"To: <sip:alice@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n"
        f"Supported: outbound, path\r\nContact: {contact}\r\nContent-Length: 0\r\n\r\n"
    )
    request = parse_message(text.encode())
    assert isinstance(request, Request)
    return request


def flow(reg_id: int, expires: int, cseq: int = 1) -> Request:
    """A REGISTER of one flow: each flow is its own registration (its own Call-ID)."""
    params = f';+sip.instance="<{PHONE}>";reg-id={reg_id};expires={expires}'
    return register(f"flow-{reg_id}", cseq, f"<{CONTACT}>{params}")


def listed(answer: Response) -> set[str]:
    """The 200's Contact values (each binding once)."""
    values = answer.header_values("contact")
    assert len(values) == len(set(values))
    return set(values)


def listing(reg_id: int, expires: int) -> str:
    return f'<{CONTACT}>;expires={expires};+sip.instance="<{PHONE}>";reg-id={reg_id}'


async def test_two_flows_with_one_contact_are_both_bound_and_listed(storage: Storage) -> None:
    endpoint = SentBytes()
    registrar = Registrar(
        config(False),
        storage,
        endpoint,  # type: ignore[arg-type]
        clock=FakeClock(),
        wall_clock=lambda: 1_700_000_000.0,  # a second passing between the two: 599
    )

    async def answer(request: Request) -> Response:
        registrar.on_request(request, PEER)
        await settle(registrar)
        [response] = endpoint.take()
        assert response.status == 200, response.reason
        return response

    first = await answer(flow(1, 600))
    assert listed(first) == {listing(1, 600)}
    assert first.header("require") == "outbound"
    second = await answer(flow(2, 300))
    assert listed(second) == {listing(1, 600), listing(2, 300)}
    # A refresh of one flow keeps the other.
    assert listed(await answer(flow(1, 900, cseq=2))) == {listing(1, 900), listing(2, 300)}
    # A Contact-only un-REGISTER (no reg-id) addresses the plain binding of that Contact:
    # there is none, so both flows stay (RFC 5626 §6: flows are not compared by Contact).
    plain = await answer(register("plain", 1, f"<{CONTACT}>;expires=0"))
    assert listed(plain) == {listing(1, 900), listing(2, 300)}
    # The flow's own un-REGISTER removes it alone.
    assert listed(await answer(flow(1, 0, cseq=3))) == {listing(2, 300)}
    assert [b.reg_id for b in await storage.location.lookup(Aor("alice", DOMAIN), now=1000)] == [2]
