"""Bencode: what rtpengine sends and expects, and nothing but BencodeError from bad bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipfleet.media import bencode
from sipfleet.media.errors import BencodeError, NgError

values = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**64) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.binary(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def test_encodes_the_ping_of_the_docs() -> None:
    assert bencode.encode({"command": "ping"}) == b"d7:command4:pinge"


def test_encodes_keys_sorted_and_str_as_utf8() -> None:
    encoded = bencode.encode({"sdp": "é", "call-id": b"x", "flags": ["a", 1], "n": -3})
    assert encoded == b"d7:call-id1:x5:flagsl1:ai1ee1:ni-3e3:sdp2:\xc3\xa9e"


@pytest.mark.parametrize("value", [True, 1.5, None, {1: 2}, object()])
def test_refuses_to_encode_other_types(value: object) -> None:
    with pytest.raises(TypeError):
        bencode.encode(value)  # type: ignore[arg-type]


def test_decodes_a_reply_with_unsorted_keys() -> None:
    """rtpengine does not sort its keys (docs/ng_control_protocol.md)."""
    assert bencode.decode(b"d6:result2:ok3:sdp3:v=0e") == {b"result": b"ok", b"sdp": b"v=0"}
    assert bencode.decode(b"d1:bi1e1:ai2ee") == {b"b": 1, b"a": 2}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i",
        b"ie",
        b"i-e",
        b"i-0e",
        b"i01e",
        b"i+1e",
        b"i 1e",
        b"i1_0e",
        b"i1.5e",
        b"i" + b"9" * 21 + b"e",
        b"01:a",
        b"-1:a",
        b"+1:a",
        b"5:abc",
        b"3abc",
        b"l",
        b"li1e",
        b"d",
        b"d1:a",
        b"di1ei2ee",
        b"dl1:aee",
        b"x",
        b"e",
        b"i1ei2e",
        b"4:spam ",
        b"l" * 100 + b"e" * 100,
        b"\xff",
    ],
)
def test_malformed_input_raises_bencode_error(data: bytes) -> None:
    with pytest.raises(BencodeError):
        bencode.decode(data)


def test_bencode_error_is_an_ng_error_and_a_value_error() -> None:
    assert issubclass(BencodeError, NgError)
    assert issubclass(BencodeError, ValueError)


def test_nesting_to_the_bound_is_accepted() -> None:
    depth = bencode.MAX_DEPTH
    assert bencode.decode(b"l" * depth + b"e" * depth) is not None


@given(values)
def test_round_trip(value: bencode.Value) -> None:
    assert bencode.decode(bencode.encode(value)) == value


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_bencode_error(data: bytes) -> None:
    with contextlib.suppress(BencodeError):  # anything else fails the test
        bencode.decode(data)


@settings(max_examples=500)
@given(values, st.data())
def test_mutated_encodings_raise_only_bencode_error(
    value: bencode.Value, data: st.DataObject
) -> None:
    encoded = bytearray(bencode.encode(value))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(encoded)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.sampled_from(b"ield0123456789:-x"))
        if action == "insert":
            encoded.insert(position, byte)
        elif position < len(encoded):
            if action == "delete":
                del encoded[position]
            else:
                encoded[position] = byte
    with contextlib.suppress(BencodeError):
        bencode.decode(bytes(encoded))
