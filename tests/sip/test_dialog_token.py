"""Dialog tokens (sipfleet.sip.dialog_token): a Route of ours verifies only in its dialog."""

from __future__ import annotations

import base64
import hashlib
import hmac

from sipfleet.sip import Request, SipUri, parse_message, parse_uri
from sipfleet.sip.dialog_token import MAX_VERIFIED, Dialog, DialogTokens

TOKENS = DialogTokens(b"cluster-secret")


def bye(call_id: str, from_tag: str, to_tag: str) -> Request:
    text = (
        "BYE sip:bob@192.0.2.20 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKbye1\r\n"
        f"From: <sip:alice@example.com>;tag={from_tag}\r\n"
        f"To: <sip:bob@example.com>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def route_with(token: str) -> SipUri:
    uri = parse_uri(f"sip:10.0.0.5:5060;lr;dt={token}")
    assert isinstance(uri, SipUri)
    return uri


def test_the_token_names_the_caller_in_either_direction() -> None:
    token = TOKENS.token(Dialog("call-1", "alice-tag"))
    assert TOKENS.caller_tag(route_with(token), bye("call-1", "alice-tag", "bob-tag")) == (
        "alice-tag"
    )
    assert TOKENS.caller_tag(route_with(token), bye("call-1", "bob-tag", "alice-tag")) == (
        "alice-tag"
    )
    assert TOKENS.caller_tag(route_with(token), bye("call-2", "alice-tag", "bob-tag")) is None
    assert TOKENS.caller_tag(route_with(token[:-2] + "AA"), bye("call-1", "alice-tag", "x")) is None
    assert (
        DialogTokens(b"other").caller_tag(route_with(token), bye("call-1", "alice-tag", "x"))
        is None
    )


def test_a_token_of_the_previous_release_still_verifies() -> None:
    """Calls set up before an upgrade carry HMAC-SHA256 tokens in their Route sets."""
    key = hashlib.sha256(b"sipfleet dialog token\x00cluster-secret").digest()
    mac = hmac.new(key, Dialog("call-1", "alice-tag").material(), hashlib.sha256).digest()[:9]
    old = base64.urlsafe_b64encode(mac).decode()
    assert old != TOKENS.token(Dialog("call-1", "alice-tag"))
    assert TOKENS.caller_tag(route_with(old), bye("call-1", "bob-tag", "alice-tag")) == "alice-tag"
    assert TOKENS.caller_tag(route_with(old), bye("call-9", "bob-tag", "alice-tag")) is None


def test_a_verified_dialog_is_remembered_and_a_forgery_is_not() -> None:
    """The second request of a dialog reads the remembered answer; a request that changes
    any part (the token, the Call-ID, a tag) is checked afresh and refused."""
    tokens = DialogTokens(b"cluster-secret")
    token = tokens.token(Dialog("call-1", "alice-tag"))
    for _ in range(2):  # the ACK, then the BYE of the same dialog
        assert tokens.caller_tag(route_with(token), bye("call-1", "alice-tag", "bob")) == (
            "alice-tag"
        )
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert tokens.caller_tag(route_with(forged), bye("call-1", "alice-tag", "bob")) is None
    assert tokens.caller_tag(route_with(token), bye("call-2", "alice-tag", "bob")) is None
    assert tokens.caller_tag(route_with(token), bye("call-1", "mallory", "bob")) is None
    # the callee's request of the same dialog: the tags swapped, the caller's still found
    assert tokens.caller_tag(route_with(token), bye("call-1", "bob", "alice-tag")) == "alice-tag"


def test_the_memory_of_verified_dialogs_is_bounded() -> None:
    tokens = DialogTokens(b"cluster-secret")
    for n in range(MAX_VERIFIED + 10):
        token = tokens.token(Dialog(f"call-{n}", "a"))
        assert tokens.caller_tag(route_with(token), bye(f"call-{n}", "a", "b")) == "a"
    assert len(tokens._verified) <= MAX_VERIFIED


def test_the_token_is_the_urlsafe_base64_of_the_keyed_blake2b_mac() -> None:
    key = hashlib.sha256(b"sipfleet dialog token\x00cluster-secret").digest()
    for call_id, tag in (("call-1", "alice-tag"), ("c", "t"), ("x" * 80, "\u00e9")):
        material = Dialog(call_id, tag).material()
        mac = hashlib.blake2b(material, key=key, digest_size=9).digest()
        assert TOKENS.token(Dialog(call_id, tag)) == base64.urlsafe_b64encode(mac).decode()
    # the URL-safe characters appear: tokens of many dialogs use all 64
    seen = set("".join(TOKENS.token(Dialog(f"call-{n}", "t")) for n in range(200)))
    assert {"-", "_"} <= seen
    assert not seen & {"+", "/", "="}
