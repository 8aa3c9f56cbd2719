"""§16.3 request validation and loop detection (sipfleet.core.proxy.checks, .branch)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sipfleet.core.proxy.addresses import OwnAddresses
from sipfleet.core.proxy.branch import BranchMaker, has_looped, loop_hash, loop_part
from sipfleet.core.proxy.checks import check_request
from tests.core.proxy.messages import request

OWN = OwnAddresses.build([("192.0.2.1", 5060)])


def looped_copy(uri: str = "sip:bob@example.com") -> str:
    """The Via we would have put on ``request(uri=uri)`` when forwarding it."""
    branch = BranchMaker().make(loop_hash(request(uri=uri)))
    return f"SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"


def test_a_plain_request_passes() -> None:
    assert check_request(request(), OWN) is None


def test_max_forwards_zero_is_483() -> None:
    rejection = check_request(request(max_forwards=0), OWN)
    assert rejection is not None
    assert rejection.status == 483


def test_max_forwards_one_is_still_forwarded() -> None:
    assert check_request(request(max_forwards=1), OWN) is None


def test_our_own_request_coming_back_unchanged_is_a_loop() -> None:
    came_back = request(extra=(f"Via: {looped_copy()}",))
    rejection = check_request(came_back, OWN)
    assert rejection is not None
    assert rejection.status == 482


def test_a_request_that_changed_its_request_uri_is_a_spiral() -> None:
    # We forwarded it for sip:bob@example.com; it came back retargeted: route it again.
    spiral = request(uri="sip:bob@192.0.2.44", extra=(f"Via: {looped_copy()}",))
    assert check_request(spiral, OWN) is None


def test_someone_elses_via_with_our_hash_is_not_a_loop() -> None:
    theirs = looped_copy().replace("192.0.2.1:5060", "192.0.2.99:5060")
    assert check_request(request(extra=(f"Via: {theirs}",)), OWN) is None


def test_unsupported_proxy_require_is_420_naming_the_tags() -> None:
    rejection = check_request(request(extra=("Proxy-Require: foo, Bar",)), OWN)
    assert rejection is not None
    assert rejection.status == 420
    assert rejection.headers == (("Unsupported", "foo, bar"),)


def test_loop_hash_covers_routing_fields_only() -> None:
    base = loop_hash(request())
    assert loop_hash(request(max_forwards=12)) == base
    assert loop_hash(request(via="SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-x")) == base
    assert loop_hash(request(cseq=2)) != base
    assert loop_hash(request(extra=("Route: <sip:192.0.2.9;lr>",))) != base
    assert loop_hash(request(extra=("Proxy-Authorization: Digest username=a",))) != base


def test_branches_are_unique_and_carry_the_loop_part() -> None:
    maker = BranchMaker()
    first, second = maker.make("abc"), maker.make("abc")
    assert first != second
    assert first.startswith("z9hG4bK")
    assert loop_part(first) == loop_part(second) == "abc"
    assert loop_part("z9hG4bKnodot") is None
    assert loop_part(None) is None


def test_branch_numbers_count_up_in_hex_from_one() -> None:
    maker = BranchMaker()
    made = [maker.make("l") for _ in range(16)]
    prefix = made[0].removesuffix("1.l")
    assert prefix.startswith("z9hG4bKsp")
    assert made[9] == prefix + "a.l"
    assert made[15] == prefix + "10.l"
    assert BranchMaker().make("l") != made[0]  # another process (or maker): another prefix


@given(st.integers(min_value=0, max_value=2**70))
def test_branch_numbers_are_the_count_formatted_in_hex(count: int) -> None:
    maker = BranchMaker()
    maker._counter = count
    assert maker.make("l") == f"{maker._prefix}{count + 1:x}.l"


def test_has_looped_ignores_requests_without_our_via() -> None:
    assert not has_looped(request(), OWN)
