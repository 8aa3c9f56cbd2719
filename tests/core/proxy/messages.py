"""Messages for the proxy's unit tests, parsed from text like received ones."""

from __future__ import annotations

from sipfleet.sip import Request, Response, parse_message
from sipfleet.sip.builders import make_response

PROXY = "192.0.2.1:5060"


def request(
    method: str = "INVITE",
    uri: str = "sip:bob@example.com",
    *,
    extra: tuple[str, ...] = (),
    to_tag: str | None = None,
    via: str = "SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bK-uac-1",
    cseq: int = 1,
    max_forwards: int | None = 70,
    call_id: str = "call-1@198.51.100.7",
    from_: str = "<sip:alice@example.com>;tag=a1",
    to: str = "<sip:bob@example.com>",
) -> Request:
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: {via}",
        f"From: {from_}",
        f"To: {to}{f';tag={to_tag}' if to_tag else ''}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        *extra,
        "Content-Length: 0",
    ]
    message = parse_message(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert isinstance(message, Request)
    return message


def response_to(
    forwarded: Request,
    status: int,
    *,
    to_tag: str = "b1",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """A response as the next hop would send it (our Via still on top), parsed."""
    built = make_response(forwarded, status, to_tag=to_tag, headers=headers)
    parsed = parse_message(built.serialize())
    assert isinstance(parsed, Response)
    return parsed
