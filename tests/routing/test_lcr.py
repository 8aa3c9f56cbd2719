"""Least-cost routing: the DESIGN §3 reference example, matching, rewriting and fairness."""

from __future__ import annotations

import itertools
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from sipfleet.routing.lcr import (
    FAX,
    PHONE,
    LcrError,
    LcrTable,
    Trunk,
    call_capability,
    load_gws,
    matchable_uri,
    weighted_order,
)
from sipfleet.routing.lcr_dryrun import (
    dry_run,
    human_lines,
    json_lines,
    parse_capability,
)
from sipfleet.routing.lcr_file import load_lcr_file
from sipfleet.sip.uri import parse_uri
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, LcrRows, Rule, RuleTarget

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lcr-capabilities.toml"
NUMBER = "4312345"

# --- chi-square, without scipy ----------------------------------------------------------

Z_ONE_IN_A_THOUSAND = 3.090232  # upper 0.1 % point of the standard normal


def chi_square_critical(df: int, z: float = Z_ONE_IN_A_THOUSAND) -> float:
    """The chi-square value exceeded with the probability of ``z`` (Wilson-Hilferty)."""
    h = 2 / (9 * df)
    return df * (1 - h + z * math.sqrt(h)) ** 3


def chi_square(observed: Counter[object], expected: dict[object, float], draws: int) -> float:
    unexpected = set(observed) - set(expected)
    assert not unexpected, f"outcomes that should never happen: {unexpected}"
    return sum((observed[key] - draws * p) ** 2 / (draws * p) for key, p in expected.items())


def is_consistent(observed: Counter[object], expected: dict[object, float], draws: int) -> bool:
    """Whether the counts fit the probabilities at the 0.1 % level."""
    return chi_square(observed, expected, draws) < chi_square_critical(len(expected) - 1)


@pytest.mark.parametrize(
    ("df", "table_value"), [(1, 10.828), (3, 16.266), (5, 20.515), (23, 49.728)]
)
def test_wilson_hilferty_is_close_to_the_table(df: int, table_value: float) -> None:
    assert chi_square_critical(df) == pytest.approx(table_value, rel=0.04)


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def example() -> LcrTable:
    return LcrTable.build(load_lcr_file(EXAMPLE).rows)


def uris(trunks: Sequence[Trunk]) -> list[str]:
    return [str(trunk.uri) for trunk in trunks]


def names(trunks: Sequence[Trunk]) -> list[str]:
    return [trunk.gateway.name for trunk in trunks]


def table_of(
    gateways: Sequence[Gateway],
    rules: Sequence[Rule],
    targets: Sequence[RuleTarget],
    caps: Sequence[GatewayCapability] | None = None,
) -> LcrTable:
    if caps is None:
        caps = [GatewayCapability(gateway.name, PHONE | FAX) for gateway in gateways]
    return LcrTable.build(LcrRows(tuple(gateways), tuple(caps), tuple(rules), tuple(targets)))


def plain(*gw_names: str) -> list[Gateway]:
    return [Gateway(name, name) for name in gw_names]


# --- the reference example (DESIGN §3) --------------------------------------------------


def test_reference_phone_call_order(example: LcrTable) -> None:
    rng = random.Random(3)
    middle_orders: Counter[object] = Counter()
    draws = 2400
    for _ in range(draws):
        trunks = load_gws(example, NUMBER, PHONE, rng=rng)
        assert uris(trunks)[0] == f"sip:01{NUMBER}@sipgw6"
        assert uris(trunks)[-1] == f"sip:01{NUMBER}@sipgw2"
        middle = trunks[1:-1]
        assert sorted(names(middle)) == ["sipgw1", "sipgw3", "sipgw4", "sipgw5"]
        assert uris(middle) == [f"sip:{NUMBER}@{name}" for name in names(middle)]
        middle_orders[tuple(names(middle))] += 1
    every_order = itertools.permutations(["sipgw1", "sipgw3", "sipgw4", "sipgw5"])
    uniform: dict[object, float] = {order: 1 / 24 for order in every_order}
    assert len(middle_orders) == 24
    assert is_consistent(middle_orders, uniform, draws)


def test_reference_fax_call_starts_at_sipgw6_or_sipgw2_half_the_time_each(
    example: LcrTable,
) -> None:
    rng = random.Random(4)
    firsts: Counter[object] = Counter()
    draws = 4000
    for _ in range(draws):
        trunks = load_gws(example, NUMBER, FAX, rng=rng)
        assert sorted(uris(trunks)) == [f"sip:02{NUMBER}@sipgw2", f"sip:02{NUMBER}@sipgw6"]
        firsts[trunks[0].gateway.name] += 1
    assert is_consistent(firsts, {"sipgw6": 0.5, "sipgw2": 0.5}, draws)
    assert abs(firsts["sipgw6"] - draws / 2) < 0.05 * draws


def test_reference_example_has_no_route_for_an_unknown_capability(example: LcrTable) -> None:
    assert load_gws(example, NUMBER, 4) == []


def test_reference_dry_run_json_lines(example: LcrTable) -> None:
    draws = dry_run(example, NUMBER, parse_capability("phone"), draws=5, rng=random.Random(5))
    lines = list(json_lines(draws))
    assert len(lines) == 5
    for line in lines:
        trunks = json.loads(line)
        assert len(trunks) == 6
        assert trunks[0]["gw"] == "sipgw6"
        assert trunks[0]["uri"] == f"sip:01{NUMBER}@sipgw6"
        assert trunks[-1] == {
            "gw": "sipgw2",
            "uri": f"sip:01{NUMBER}@sipgw2",
            "priority": 3,
            "weight": 1,
            "capability": PHONE,
            "rule": 1,
        }


def test_reference_dry_run_human_lines(example: LcrTable) -> None:
    draws = dry_run(example, NUMBER, FAX, draws=40, rng=random.Random(6))
    text = "\n".join(human_lines(NUMBER, FAX, draws))
    assert f"draw 40: {NUMBER} (fax = 2): 2 trunk(s)" in text
    assert f"1. sipgw6  sip:02{NUMBER}@sipgw6  (rule 1, priority 1, weight 1)" in text
    assert "first trunk over 40 draws:" in text
    single = list(human_lines(NUMBER, PHONE, dry_run(example, NUMBER, PHONE)))
    assert single[0] == f"{NUMBER} (phone = 1): 6 trunk(s)"
    assert list(human_lines(NUMBER, 8, [[]])) == [f"{NUMBER} (capability 8): no route"]


@pytest.mark.parametrize(
    ("text", "bit"), [("phone", 1), ("FAX", 2), ("2", 2), ("8", 8), ("0x10", 16)]
)
def test_parse_capability(text: str, bit: int) -> None:
    assert parse_capability(text) == bit


@pytest.mark.parametrize(
    ("text", "message"),
    [("3", "not a single bit"), ("0", "not a single bit"), ("video", "is not a name")],
)
def test_parse_capability_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_capability(text)


def test_dry_run_needs_a_draw(example: LcrTable) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        dry_run(example, NUMBER, PHONE, draws=0)


# --- rule matching ----------------------------------------------------------------------


def prefix_table(stopper_on_43: bool = False, disabled_431: bool = False) -> LcrTable:
    rules = [
        Rule(1, ""),
        Rule(2, "43", stopper=stopper_on_43),
        Rule(3, "431", enabled=not disabled_431),
        Rule(4, "49"),
    ]
    targets = [
        RuleTarget(1, "any", PHONE),
        RuleTarget(2, "austria", PHONE),
        RuleTarget(3, "vienna", PHONE),
        RuleTarget(4, "germany", PHONE),
    ]
    return table_of(plain("any", "austria", "vienna", "germany"), rules, targets)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("4312345", ["vienna", "austria", "any"]),
        ("4322", ["austria", "any"]),
        ("43", ["austria", "any"]),
        ("4", ["any"]),
        ("4912", ["germany", "any"]),
        ("", []),  # an empty number leaves no user part for the R-URI
    ],
)
def test_longest_prefix_first_then_shorter(number: str, expected: list[str]) -> None:
    assert names(load_gws(prefix_table(), number, PHONE)) == expected


def test_stopper_ends_the_search_at_its_rule() -> None:
    table = prefix_table(stopper_on_43=True)
    assert names(load_gws(table, "4312345", PHONE)) == ["vienna", "austria"]
    assert names(load_gws(table, "4399", PHONE)) == ["austria"]
    assert names(load_gws(table, "4999", PHONE)) == ["germany", "any"]


def test_disabled_rule_is_ignored() -> None:
    table = prefix_table(disabled_431=True)
    assert names(load_gws(table, "4312345", PHONE)) == ["austria", "any"]


def test_a_gateway_is_tried_once_at_its_longest_rule() -> None:
    rules = [Rule(1, ""), Rule(2, "43")]
    targets = [
        RuleTarget(1, "a", PHONE),
        RuleTarget(1, "b", PHONE),
        RuleTarget(2, "b", PHONE),
    ]
    trunks = load_gws(table_of(plain("a", "b"), rules, targets), "4312", PHONE)
    assert [(t.gateway.name, t.rule) for t in trunks] == [("b", 2), ("a", 1)]


def pattern_table() -> LcrTable:
    rules = [
        Rule(1, "43", from_uri="sip:*@pbx.example.com"),
        Rule(2, "43", request_uri="sip:43??@*"),
        Rule(3, "4"),
    ]
    targets = [
        RuleTarget(1, "pbx-trunk", PHONE),
        RuleTarget(2, "short-trunk", PHONE),
        RuleTarget(3, "default", PHONE),
    ]
    return table_of(plain("pbx-trunk", "short-trunk", "default"), rules, targets)


@pytest.mark.parametrize(
    ("from_uri", "request_uri", "expected"),
    [
        ("sip:alice@pbx.example.com", None, ["pbx-trunk", "default"]),
        ("SIP:alice@PBX.Example.COM", None, ["pbx-trunk", "default"]),
        ("sip:alice@pbx.example.com.evil", None, ["default"]),
        ("sip:alice@other.example.com", None, ["default"]),
        (None, None, ["default"]),
        (None, "sip:4312@gw.example.com", ["short-trunk", "default"]),
        (None, "sip:43123@gw.example.com", ["default"]),
        ("sip:bob@pbx.example.com", "sip:4399@x", ["pbx-trunk", "short-trunk", "default"]),
    ],
)
def test_from_and_request_uri_patterns(
    from_uri: str | None, request_uri: str | None, expected: list[str]
) -> None:
    trunks = load_gws(pattern_table(), "4312", PHONE, from_uri, request_uri)
    assert sorted(names(trunks)[:-1]) == sorted(expected[:-1])
    assert names(trunks)[-1] == expected[-1]


def test_matchable_uri_drops_parameters() -> None:
    from_uri = parse_uri("sip:alice@pbx.example.com:5070;user=phone;transport=tcp")
    assert matchable_uri(from_uri) == "sip:alice@pbx.example.com:5070"
    assert matchable_uri(parse_uri("tel:+43-1-234;phone-context=x")) == "tel:+431234"


# --- capabilities, rewriting, exclusion -------------------------------------------------


def capability_table() -> LcrTable:
    gateways = plain("both", "fax-only", "phone-only")
    caps = [
        GatewayCapability("both", PHONE, "01"),
        GatewayCapability("both", FAX, "02"),
        GatewayCapability("fax-only", FAX | 4, "9"),
        GatewayCapability("phone-only", PHONE),
    ]
    targets = [
        RuleTarget(1, "both", PHONE | FAX, priority=1),
        RuleTarget(1, "fax-only", FAX | 4, priority=2),
        RuleTarget(1, "phone-only", PHONE, priority=2),
    ]
    return table_of(gateways, [Rule(1, "")], targets, caps)


def test_a_target_with_several_bits_serves_each_capability() -> None:
    table = capability_table()
    assert uris(load_gws(table, NUMBER, PHONE)) == [
        f"sip:01{NUMBER}@both",
        f"sip:{NUMBER}@phone-only",
    ]
    assert uris(load_gws(table, NUMBER, FAX)) == [f"sip:02{NUMBER}@both", f"sip:9{NUMBER}@fax-only"]
    assert uris(load_gws(table, NUMBER, 4)) == [f"sip:9{NUMBER}@fax-only"]
    assert load_gws(table, NUMBER, 8) == []
    assert [t.capability for t in load_gws(table, NUMBER, FAX)] == [FAX, FAX]


@pytest.mark.parametrize("capability", [0, 3, -1, 2**31])
def test_a_call_asks_for_exactly_one_capability(capability: int) -> None:
    with pytest.raises(ValueError, match="not a single bit"):
        load_gws(capability_table(), NUMBER, capability)


def test_strip_then_prefix_and_the_gateway_address() -> None:
    gateways = [
        Gateway("de", "10.0.0.1", port=5080, transport="tcp", strip=2),
        Gateway("v6", "[2001:db8::1]", strip=3),
        Gateway("all", "gw.example.com", strip=20),
    ]
    caps = [
        GatewayCapability("de", PHONE, "0049"),
        GatewayCapability("v6", PHONE),
        GatewayCapability("all", PHONE),
    ]
    targets = [RuleTarget(1, "de", PHONE, 1), RuleTarget(1, "v6", PHONE, 2)]
    targets.append(RuleTarget(1, "all", PHONE, 3))
    trunks = load_gws(table_of(gateways, [Rule(1, "")], targets, caps), NUMBER, PHONE)
    # "all" would have an empty user part: it cannot carry this number and is left out.
    assert uris(trunks) == ["sip:004912345@10.0.0.1:5080;transport=tcp", "sip:2345@[2001:db8::1]"]
    assert trunks[0].uri.user == "004912345"
    assert trunks[0].uri.transport == "tcp"


def test_defunct_and_disabled_gateways_are_left_out(example: LcrTable) -> None:
    def sipgw6_is_down(gateway: Gateway) -> bool:
        return gateway.name == "sipgw6"

    trunks = load_gws(example, NUMBER, PHONE, is_defunct=sipgw6_is_down)
    assert sorted(names(trunks)[:4]) == ["sipgw1", "sipgw3", "sipgw4", "sipgw5"]
    assert names(trunks)[4:] == ["sipgw2"]
    assert names(load_gws(example, NUMBER, FAX, is_defunct=sipgw6_is_down)) == ["sipgw2"]

    gateways = [Gateway("on", "on"), Gateway("off", "off", enabled=False)]
    targets = [RuleTarget(1, "on", PHONE), RuleTarget(1, "off", PHONE)]
    assert names(load_gws(table_of(gateways, [Rule(1, "")], targets), NUMBER, PHONE)) == ["on"]


def test_inconsistent_rows_are_refused_with_the_entry_named() -> None:
    rows = LcrRows(
        gateways=(Gateway("sipgw1", "sipgw1"),),
        capabilities=(GatewayCapability("sipgw1", PHONE),),
        rules=(Rule(3, "43"),),
        targets=(RuleTarget(3, "sipgw9", PHONE), RuleTarget(7, "sipgw1", PHONE)),
    )
    with pytest.raises(LcrError) as caught:
        LcrTable.build(rows, origin="lcr tables")
    assert caught.value.problems == (
        'rule 3 (prefix "43"): target gw "sipgw9" is not a known gateway',
        'rule 7: target gw "sipgw1": rule does not exist',
    )
    assert str(caught.value).startswith("lcr tables: 2 problems\n")


def test_a_large_table_keeps_longest_prefix_semantics() -> None:
    gateways = plain("a", "b")
    rules = [Rule(i + 1, str(10_000 + i)) for i in range(20_000)]
    rules.append(Rule(30_000, "1"))
    targets = [RuleTarget(i + 1, "a", PHONE) for i in range(20_000)]
    targets.append(RuleTarget(30_000, "b", PHONE))
    table = table_of(gateways, rules, targets)
    assert [t.rule for t in load_gws(table, "1234567", PHONE)] == [2346, 30_000]  # "12345"
    assert [t.rule for t in load_gws(table, "19", PHONE)] == [30_000]


# --- fairness ---------------------------------------------------------------------------

WEIGHTS = {"w1": 1, "w2": 2, "w3": 3, "w4": 4}
OrderFunction = Callable[[random.Random], list[str]]


def ours(rng: random.Random) -> list[str]:
    """The order load_gws gives four trunks of one priority with weights 1:2:3:4."""
    return names(load_gws(FAIRNESS_TABLE, NUMBER, PHONE, rng=rng))


def weight_times_random_then_sort(rng: random.Random) -> list[str]:
    """The classic unfair algorithm: heavier trunks win far more than their share."""
    return sorted(WEIGHTS, key=lambda name: WEIGHTS[name] * rng.random(), reverse=True)


def fair_first_then_uniform(rng: random.Random) -> list[str]:
    """Fair for the first trunk only: the rest are shuffled, ignoring their weights."""
    first = weighted_order(list(WEIGHTS), list(WEIGHTS.values()), rng)[0]
    rest = [name for name in WEIGHTS if name != first]
    rng.shuffle(rest)
    return [first, *rest]


def _fairness_table() -> LcrTable:
    targets = [RuleTarget(1, name, PHONE, 1, weight) for name, weight in WEIGHTS.items()]
    return table_of(plain(*WEIGHTS), [Rule(1, "")], targets)


FAIRNESS_TABLE = _fairness_table()


def exact_order_probability(order: Sequence[str]) -> float:
    """Successive draws without replacement: each pick is weight / remaining weight."""
    remaining = sum(WEIGHTS.values())
    probability = 1.0
    for name in order:
        probability *= WEIGHTS[name] / remaining
        remaining -= WEIGHTS[name]
    return probability


def first_position_is_fair(order: OrderFunction, draws: int = 6000) -> bool:
    rng = random.Random(11)
    total = sum(WEIGHTS.values())
    firsts: Counter[object] = Counter(order(rng)[0] for _ in range(draws))
    return is_consistent(firsts, {n: w / total for n, w in WEIGHTS.items()}, draws)


def full_order_is_fair(order: OrderFunction, draws: int = 12000) -> bool:
    rng = random.Random(12)
    orders: Counter[object] = Counter(tuple(order(rng)) for _ in range(draws))
    expected: dict[object, float] = {
        perm: exact_order_probability(perm) for perm in itertools.permutations(WEIGHTS)
    }
    assert sum(expected.values()) == pytest.approx(1.0)
    return is_consistent(orders, expected, draws)


def test_first_trunk_chance_is_weight_over_sum() -> None:
    assert first_position_is_fair(ours)


def test_full_order_distribution_is_exact() -> None:
    assert full_order_is_fair(ours)


def test_the_check_rejects_weight_times_random_then_sort() -> None:
    assert not first_position_is_fair(weight_times_random_then_sort)
    assert not full_order_is_fair(weight_times_random_then_sort)


def test_the_full_order_check_rejects_an_algorithm_fair_only_for_the_first_trunk() -> None:
    assert first_position_is_fair(fair_first_then_uniform)
    assert not full_order_is_fair(fair_first_then_uniform)


def test_weight_zero_comes_after_every_positive_weight() -> None:
    rng = random.Random(13)
    seen: Counter[object] = Counter()
    for _ in range(600):
        order = weighted_order(["drain-a", "live", "drain-b"], [0, 5, 0], rng)
        assert order[0] == "live"
        seen[tuple(order)] += 1
    assert set(seen) == {("live", "drain-a", "drain-b"), ("live", "drain-b", "drain-a")}
    assert is_consistent(
        seen, {("live", "drain-a", "drain-b"): 0.5, ("live", "drain-b", "drain-a"): 0.5}, 600
    )


def test_priorities_are_ordered_before_weights() -> None:
    targets = [RuleTarget(1, "heavy", PHONE, 2, 1000), RuleTarget(1, "light", PHONE, 1, 1)]
    table = table_of(plain("heavy", "light"), [Rule(1, "")], targets)
    rng = random.Random(14)
    for _ in range(50):
        assert names(load_gws(table, NUMBER, PHONE, rng=rng)) == ["light", "heavy"]


def test_weighted_order_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="negative"):
        weighted_order(["a"], [-1], random.Random())
    with pytest.raises(ValueError, match="length"):
        weighted_order(["a"], [1, 2], random.Random())


# --- the capability of a call -----------------------------------------------------------

AUDIO = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
)
T38 = (
    b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=image 49172 udptl t38\r\na=T38FaxVersion:0\r\na=T38FaxRateManagement:transferredTCF\r\n"
)
BOTH = AUDIO + b"m=image 49172 UDPTL T38\n"
IMAGE_DECLINED = AUDIO + b"m=image 0 udptl t38\r\n"
IMAGE_NOT_T38 = AUDIO + b"m=image 49172 udptl jpeg\r\n"


@pytest.mark.parametrize(
    ("preference", "sdp", "expected"),
    [
        (None, AUDIO, PHONE),
        (None, T38, FAX),
        (None, BOTH, FAX),
        (None, IMAGE_DECLINED, PHONE),
        (None, IMAGE_NOT_T38, PHONE),
        (None, None, PHONE),
        (None, b"", PHONE),
        (PHONE, T38, PHONE),
        (FAX, AUDIO, FAX),
        (8, None, 8),
    ],
)
def test_call_capability(preference: int | None, sdp: bytes | None, expected: int) -> None:
    assert call_capability(preference, sdp) == expected


@pytest.mark.parametrize("preference", [0, 3, -2])
def test_call_capability_rejects_a_preference_that_is_not_one_bit(preference: int) -> None:
    with pytest.raises(ValueError, match=f"lcr_cap preference {preference} is not"):
        call_capability(preference, AUDIO)
