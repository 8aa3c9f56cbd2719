"""Flow tokens (sipfleet.sip.flow): round trip, and nothing forged gets through."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

import pytest

from sipfleet.sip.dialog_token import Dialog
from sipfleet.sip.flow import MAX_DECODED, MAX_DECODED_TEXT, Flow, FlowTokens

TOKENS = FlowTokens(b"cluster-secret")


@pytest.mark.parametrize(
    "flow",
    [
        Flow("udp", "203.0.113.7", 40312),
        Flow("tcp", "198.51.100.2", 5060, connection=123456, worker=3, reach_by_flow=True),
        Flow("udp", "192.0.2.1", 5060, reach_by_flow=False),
        Flow("tcp", "2001:db8::1", 5061, connection=7),
        Flow("udp", "203.0.113.7", 40312, worker=1, lb=65535),
        Flow("tls", "198.51.100.2", 50123, connection=9, worker=2, reach_by_flow=False),
        Flow("tls", "2001:db8::1", 5061, connection=7),
    ],
)
def test_round_trip(flow: Flow) -> None:
    token = TOKENS.encode(flow)
    assert TOKENS.decode(token) == flow


def test_token_is_safe_in_a_sip_user_part() -> None:
    token = TOKENS.encode(
        Flow("tcp", "2001:db8::1", 5061, connection=2**32 - 1, worker=255, lb=65535)
    )
    assert all(ch.isalnum() or ch in "-_" for ch in token)
    assert len(token) <= 64


def test_another_secret_does_not_accept_it() -> None:
    token = TOKENS.encode(Flow("udp", "203.0.113.7", 40312))
    assert FlowTokens(b"other-cluster").decode(token) is None


def test_every_single_character_change_is_refused() -> None:
    token = TOKENS.encode(Flow("udp", "203.0.113.7", 40312))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, original in enumerate(token):
        replacement = alphabet[(alphabet.index(original) + 1) % len(alphabet)]
        forged = token[:i] + replacement + token[i + 1 :]
        assert TOKENS.decode(forged) is None, f"changed at {i}"


def test_only_the_canonical_spelling_is_accepted() -> None:
    """The last character of an unpadded base64 text carries bits that decode to nothing;
    a spelling with them set is the same bytes, and is refused: one token, one spelling."""
    token = TOKENS.encode(Flow("udp", "203.0.113.7", 40312))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare_bits = {2: 4, 3: 2}[len(token) % 4]  # 2 or 3 characters in the last group
    last = alphabet.index(token[-1])
    spellings = [token[:-1] + alphabet[last | low] for low in range(1, 1 << spare_bits)]
    assert spellings
    for spelling in spellings:
        assert TOKENS.decode(spelling) is None


def test_a_dialog_bound_token_verifies_only_in_its_dialog() -> None:
    flow = Flow("udp", "203.0.113.7", 40312)
    token = TOKENS.encode(flow, Dialog("call-1", "tag-a"))
    assert TOKENS.decode(token, "call-1", ("tag-a", None)) == flow  # caller's request
    assert TOKENS.decode(token, "call-1", ("tag-b", "tag-a")) == flow  # callee's request
    assert TOKENS.decode(token, "call-2", ("tag-a", "tag-b")) is None
    assert TOKENS.decode(token, "call-1", ("tag-b", "tag-c")) is None
    assert TOKENS.decode(token) is None
    # A Path token (not bound) serves any call.
    assert TOKENS.decode(TOKENS.encode(flow), "any", ("x",)) == flow


def test_a_remembered_token_still_verifies_only_for_its_own_dialog() -> None:
    tokens = FlowTokens(b"cluster-secret")
    flow = Flow("udp", "203.0.113.7", 40312)
    token = tokens.encode(flow, Dialog("call-1", "tag-a"))
    for _ in range(2):  # the ACK, then the BYE
        assert tokens.decode(token, "call-1", ("tag-a", "tag-b")) == flow
    assert tokens.decode(token, "call-2", ("tag-a", "tag-b")) is None
    assert tokens.decode(token, "call-1", ("tag-c", "tag-b")) is None
    assert tokens.decode(token) is None
    assert tokens.decode(token, "call-1", ("tag-b", "tag-a")) == flow  # the callee's BYE
    changed = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    assert tokens.decode(changed, "call-1", ("tag-a", "tag-b")) is None
    # another cluster's secret: what this one remembered does not count there
    assert FlowTokens(b"other-secret").decode(token, "call-1", ("tag-a", "tag-b")) is None


def test_a_dialog_token_made_here_decodes_as_it_would_verify() -> None:
    """The LB remembers the dialog tokens it makes (the ACK's comes back without a MAC
    computed): every answer is the one a fresh instance, which has to verify, gives."""
    tokens, fresh = FlowTokens(b"cluster-secret"), FlowTokens(b"cluster-secret")
    flows = [
        Flow("udp", "203.0.113.7", 40312, worker=9, lb=7),
        Flow("tcp", "198.51.100.2", 5060, connection=123456, worker=3),
        Flow("udp", "192.0.2.1", 5060, reach_by_flow=False),
        Flow("tls", "2001:db8::1", 5061, connection=7),  # IPv6: not remembered
    ]
    asked = [
        ("call-1", ("tag-a", "tag-b")),
        ("call-1", ("tag-b", "tag-a")),
        ("call-1", ("tag-a", None)),
        ("call-2", ("tag-a", "tag-b")),
        ("call-1", ("tag-b", "tag-c")),
        ("call-1", ("TAG-A", "tag-b")),
        ("call-1", ()),
        ("", ()),
    ]
    for flow in flows:
        token = tokens.encode(flow, Dialog("call-1", "tag-a"))
        for call_id, tags in asked:
            assert tokens.decode(token, call_id, tags) == fresh.decode(token, call_id, tags)
        assert tokens.decode(token, "call-1", ("tag-b", "tag-a")) == flow
    assert len(tokens._minted) == 3
    untagged = tokens.encode(flows[0], Dialog("call-1", ""))  # binds to no tag: refused
    assert tokens.decode(untagged, "call-1", ("", "x")) is None
    assert len(tokens._minted) == 3


def test_what_is_remembered_stays_bounded() -> None:
    tokens = FlowTokens(b"cluster-secret")
    flow = Flow("udp", "203.0.113.7", 40312)
    path = tokens.encode(flow)  # not bound: verifies with any Call-ID
    for n in range(MAX_DECODED + 20):
        assert tokens.decode(path, f"call-{n}", ("a",)) == flow
    assert len(tokens._decoded) <= MAX_DECODED
    long_call_id = "c" * (MAX_DECODED_TEXT + 1)
    before = len(tokens._decoded)
    assert tokens.decode(path, long_call_id, ("a",)) == flow
    assert len(tokens._decoded) == before  # decoded, not kept


@pytest.mark.parametrize(
    "junk", ["", "x", "a" * 65, "!!!!", "é" * 10, "AAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
)
def test_junk_is_refused(junk: str) -> None:
    assert TOKENS.decode(junk) is None


def hmac_token(flow_body: bytes, bound: bytes = b"") -> str:
    """A token as the release before version 3 wrote it: HMAC-SHA256 over the body."""
    key = hashlib.sha256(b"sipfleet flow token\x00cluster-secret").digest()
    mac = hmac.new(key, flow_body + bound, hashlib.sha256).digest()[:10]
    return base64.urlsafe_b64encode(flow_body + mac).rstrip(b"=").decode()


def test_tokens_of_the_previous_release_are_still_accepted() -> None:
    """Registrations store their Path and dialogs keep their Record-Routes across an
    upgrade: version 2 tokens (HMAC-SHA256) still name their flow, and a changed one is
    refused as before."""
    body = struct.pack("!BBBHIH", 2, 0x02, 1, 40312, 0, 7) + bytes([203, 0, 113, 7])
    flow = Flow("udp", "203.0.113.7", 40312, worker=1, lb=7)
    assert TOKENS.decode(hmac_token(body)) == flow
    bound = struct.pack("!BBBHIH", 2, 0x02 | 0x08, 1, 40312, 0, 7) + bytes([203, 0, 113, 7])
    token = hmac_token(bound, Dialog("call-1", "tag-a").material())
    assert TOKENS.decode(token, "call-1", ("tag-a", None)) == flow
    assert TOKENS.decode(token, "call-2", ("tag-a", None)) is None
    assert TOKENS.decode(hmac_token(body)[:-2] + "AA") is None
    unknown = struct.pack("!BBBHIH", 1, 0x02, 1, 40312, 0, 7) + bytes([203, 0, 113, 7])
    assert TOKENS.decode(hmac_token(unknown)) is None  # no version 1 was ever accepted
