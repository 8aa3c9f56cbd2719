"""The declarative LCR file: the reference example, the format, and every class of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfleet.routing.lcr import FAX, PHONE, LcrError, LcrTable, load_gws
from sipfleet.routing.lcr_file import load_lcr_file, parse_lcr_file
from sipfleet.storage.lcr_rows import Gateway, GatewayCapability, Rule, RuleTarget

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lcr-capabilities.toml"

GATEWAYS = """
[[gateway]]
name = "sipgw1"
host = "sipgw1"
caps = [{ cap = "phone" }]

[[gateway]]
name = "sipgw2"
host = "sipgw2"
caps = [{ cap = "phone", prefix = "01" }, { cap = "fax", prefix = "02" }]
"""
ONLY_DIGITS = "may hold only digits, '+', '*' and '#'"
NO_CAPABILITY = "0 names no capability (phone = 1, fax = 2, then 4, 8, ...)"


def problems_of(text: str) -> tuple[str, ...]:
    with pytest.raises(LcrError) as caught:
        parse_lcr_file(text, "test.toml")
    return caught.value.problems


def rule_with(target: str, rule: str = 'id = 3\nprefix = "43"') -> str:
    return f"{GATEWAYS}\n[[rule]]\n{rule}\n\n[[rule.target]]\n{target}\n"


# --- reading ----------------------------------------------------------------------------


def test_the_reference_example_reads_as_designed() -> None:
    rows = load_lcr_file(EXAMPLE).rows
    assert [gateway.name for gateway in rows.gateways] == [
        "sipgw2",
        "sipgw6",
        "sipgw1",
        "sipgw3",
        "sipgw4",
        "sipgw5",
    ]
    assert set(rows.capabilities) == {
        GatewayCapability("sipgw2", PHONE, "01"),
        GatewayCapability("sipgw2", FAX, "02"),
        GatewayCapability("sipgw6", PHONE, "01"),
        GatewayCapability("sipgw6", FAX, "02"),
        *(GatewayCapability(f"sipgw{n}", PHONE, "") for n in (1, 3, 4, 5)),
    }
    assert rows.rules == (Rule(1, ""),)
    phone = {t.gw: t.priority for t in rows.targets if t.capability == PHONE}
    fax = {t.gw: t.priority for t in rows.targets if t.capability == FAX}
    assert phone == {"sipgw6": 1, "sipgw1": 2, "sipgw3": 2, "sipgw4": 2, "sipgw5": 2, "sipgw2": 3}
    assert fax == {"sipgw6": 1, "sipgw2": 1}
    assert {t.weight for t in rows.targets} == {1}


def test_every_field_of_the_format() -> None:
    text = """
    [capabilities]
    modem = 4

    [[gateway]]
    name = "de"
    host = "10.0.0.1"
    port = 5080
    transport = "tcp"
    strip = 2
    enabled = false
    trusted = true
    caps = [{ cap = ["phone", "fax"], prefix = "0049" }, { cap = "modem" }]

    [[rule]]
    id = 17
    prefix = "+49"
    from_uri = "sip:*@pbx.example.com"
    request_uri = "sip:+49*"
    stopper = true
    enabled = false

    [[rule.target]]
    gw = "de"
    cap = 7
    priority = 2
    weight = 0

    [[rule]]
    prefix = "0"

    [[rule.target]]
    gw = "de"
    cap = ["fax", "modem"]
    """
    lcr = parse_lcr_file(text)
    assert lcr.rows.gateways == (
        Gateway("de", "10.0.0.1", 5080, "tcp", strip=2, enabled=False, trusted=True),
    )
    assert lcr.rows.capabilities == (
        GatewayCapability("de", PHONE | FAX, "0049"),
        GatewayCapability("de", 4, ""),
    )
    assert lcr.rows.rules == (
        Rule(17, "+49", "sip:*@pbx.example.com", "sip:+49*", stopper=True, enabled=False),
        Rule(2, "0"),  # the id defaults to the rule's position in the file
    )
    assert lcr.rows.targets == (
        RuleTarget(17, "de", 7, priority=2, weight=0),
        RuleTarget(2, "de", FAX | 4, priority=1, weight=1),
    )
    assert lcr.capability_names == {"phone": 1, "fax": 2, "modem": 4}


def test_an_imported_file_routes() -> None:
    text = rule_with('gw = "sipgw2"\ncap = "fax"') + '\n[[rule.target]]\ngw = "sipgw1"\ncap = 1\n'
    table = LcrTable.build(parse_lcr_file(text).rows)
    assert [str(t.uri) for t in load_gws(table, "4312", FAX)] == ["sip:024312@sipgw2"]
    assert [str(t.uri) for t in load_gws(table, "4312", PHONE)] == ["sip:4312@sipgw1"]
    assert load_gws(table, "4912", PHONE) == []


def test_an_empty_file_is_an_empty_table() -> None:
    assert parse_lcr_file("").rows.gateways == ()


# --- bad input: each class names its entry and field ------------------------------------


def test_unknown_gateway() -> None:
    assert problems_of(rule_with('gw = "sipgw9"\ncap = 1')) == (
        'rule 3 (prefix "43"): target gw "sipgw9" is not a known gateway',
    )


@pytest.mark.parametrize("prefix", ["4a", "43 ", "4-3", "٤٣"])
def test_bad_rule_prefix(prefix: str) -> None:
    problems = problems_of(rule_with('gw = "sipgw1"\ncap = 1', f'id = 3\nprefix = "{prefix}"'))
    assert problems == (f'rule 3 (prefix "{prefix}"): prefix: "{prefix}" ' + ONLY_DIGITS,)


def test_good_rule_prefixes() -> None:
    for prefix in ["", "+43", "*21#", "0"]:
        parse_lcr_file(rule_with('gw = "sipgw1"\ncap = 1', f'prefix = "{prefix}"'))


def test_bad_gateway_prefix() -> None:
    text = '[[gateway]]\nname = "g"\nhost = "g"\ncaps = [{ cap = 1, prefix = "0x" }]\n'
    assert problems_of(text) == (
        "gateway \"g\": capability 1: prefix: \"0x\" may hold only digits, '+', '*' and '#'",
    )


def test_capability_zero() -> None:
    assert problems_of(rule_with('gw = "sipgw1"\ncap = 0')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": cap: ' + NO_CAPABILITY,
    )
    text = '[[gateway]]\nname = "g"\nhost = "g"\ncaps = [{ cap = 0 }]\n'
    assert problems_of(text) == ('gateway "g": capability 0: cap: ' + NO_CAPABILITY,)


@pytest.mark.parametrize(
    ("cap", "shown"),
    [("1.5", "1.5"), ("true", "true"), ('"video"', '"video"'), ("[1, -2]", "-2"), ("{}", "{}")],
)
def test_capability_not_an_integer_or_a_name(cap: str, shown: str) -> None:
    assert problems_of(rule_with(f'gw = "sipgw1"\ncap = {cap}')) == (
        f'rule 3 (prefix "43"): target gw "sipgw1": cap: {shown} is neither a bit-field '
        "nor a name (fax, phone)",
    )


def test_capability_missing_or_out_of_range() -> None:
    assert problems_of(rule_with('gw = "sipgw1"')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": cap: missing',
    )
    assert problems_of(rule_with('gw = "sipgw1"\ncap = -1')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": cap: -1 is not a bit-field between 1 and '
        "2147483647",
    )


def test_capability_the_gateway_does_not_carry() -> None:
    assert problems_of(rule_with('gw = "sipgw1"\ncap = ["phone", "fax"]')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": cap: bits 2 are not carried by gateway '
        '"sipgw1" (it carries 1)',
    )


def test_negative_weight() -> None:
    assert problems_of(rule_with('gw = "sipgw1"\ncap = 1\nweight = -1')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": weight: -1 is negative',
    )


def test_priority_below_one() -> None:
    assert problems_of(rule_with('gw = "sipgw1"\ncap = 1\npriority = 0')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": priority: 0 is less than 1 (1 is tried first)',
    )


@pytest.mark.parametrize("field", ["priority", "weight"])
def test_priority_and_weight_must_be_integers(field: str) -> None:
    assert problems_of(rule_with(f'gw = "sipgw1"\ncap = 1\n{field} = "2"')) == (
        f'rule 3 (prefix "43"): target gw "sipgw1": {field}: "2" is not an integer',
    )


def test_duplicate_gateway_name() -> None:
    text = GATEWAYS + '\n[[gateway]]\nname = "sipgw1"\nhost = "other"\ncaps = [{ cap = 2 }]\n'
    assert problems_of(text) == ('gateway "sipgw1": name: defined twice',)


def test_duplicate_rule_id_and_duplicate_match() -> None:
    text = GATEWAYS + '[[rule]]\nid = 1\nprefix = "43"\n[[rule]]\nid = 1\nprefix = "43"\n'
    assert problems_of(text) == (
        'rule 1 (prefix "43"): id: defined twice',
        'rule 1 (prefix "43"): matches exactly the same calls as rule 1',
    )


def test_target_listed_twice_for_the_same_capability() -> None:
    text = rule_with('gw = "sipgw2"\ncap = 3') + '\n[[rule.target]]\ngw = "sipgw2"\ncap = 2\n'
    assert problems_of(text) == (
        'rule 3 (prefix "43"): target gw "sipgw2": cap: bits 2 listed twice for this gateway',
    )


def test_overlapping_gateway_capabilities() -> None:
    text = '[[gateway]]\nname = "g"\nhost = "g"\ncaps = [{ cap = 3 }, { cap = 2, prefix = "9" }]\n'
    assert problems_of(text) == (
        'gateway "g": capability 2: cap: bits 2 already have a prefix on this gateway',
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('host = "bad host"', 'host: "bad host" is not a host name or IP address'),
        ('host = "[::zz]"', 'host: "[::zz]" is not a host name or IP address'),
        ("port = 0", "port: 0 is not between 1 and 65535"),
        ("port = 65536", "port: 65536 is not between 1 and 65535"),
        ('port = "5060"', 'port: "5060" is not an integer'),
        ('transport = "ws"', 'transport: "ws" is not one of udp, tcp, tls, sctp'),
        ("strip = -1", "strip: -1 is negative"),
        ('enabled = "no"', 'enabled: "no" is not true or false'),
        ("trusted = 1", "trusted: 1 is not true or false"),
        ("prot = 5060", 'unknown key "prot"'),
    ],
)
def test_bad_gateway_fields(line: str, problem: str) -> None:
    text = f'[[gateway]]\nname = "g"\nhost = "g"\ncaps = [{{ cap = 1 }}]\n{line}\n'
    text = text.replace('host = "g"\n', "") if line.startswith("host") else text
    assert problems_of(text) == (f'gateway "g": {problem}',)


def test_gateway_without_name_host_or_caps() -> None:
    assert problems_of('[[gateway]]\nhost = "g"\ncaps = [{ cap = 1 }]\n') == (
        "gateway #1: name: missing, or not a string",
    )
    assert problems_of('[[gateway]]\nname = "g"\n') == (
        'gateway "g": host: missing',
        'gateway "g": caps: missing (list what the gateway can carry)',
        'gateway "g": host: "" is not a host name or IP address',
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('stopper = "yes"', 'stopper: "yes" is not true or false'),
        ("from_uri = 5", "from_uri: 5 is not a string"),
        (f'request_uri = "{"*" * 257}"', "request_uri: longer than 256 characters"),
        ('form_uri = "sip:*"', 'unknown key "form_uri"'),
    ],
)
def test_bad_rule_fields(line: str, problem: str) -> None:
    text = rule_with('gw = "sipgw1"\ncap = 1', f'id = 3\nprefix = "43"\n{line}')
    assert problems_of(text) == (f'rule 3 (prefix "43"): {problem}',)


def test_target_without_gateway_and_unknown_target_key() -> None:
    assert problems_of(rule_with("cap = 1")) == (
        'rule 3 (prefix "43"): target 1: gw: missing, or not a string',
    )
    assert problems_of(rule_with('gw = "sipgw1"\ncap = 1\nweigth = 2')) == (
        'rule 3 (prefix "43"): target gw "sipgw1": unknown key "weigth"',
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[gateway]\nname = "g"\n', "gateway: must be an array of tables"),
        ('[[gateways]]\nname = "g"\n', 'file: unknown key "gateways"'),
        (
            "[capabilities]\nmodem = 3\n",
            "capabilities: modem: 3 is not a single bit (1, 2, 4, 8, ...)",
        ),
        ("[capabilities]\nfax = 4\n", "capabilities: fax: is built in as 2"),
        ("[capabilities]\ntelefax = 2\n", 'capabilities: telefax: bit 2 is already named "fax"'),
        ('capabilities = "phone"\n', "capabilities: must be a table of name = bit"),
    ],
)
def test_bad_file_structure(text: str, problem: str) -> None:
    assert problems_of(text) == (problem,)


def test_every_problem_is_reported_at_once() -> None:
    text = (
        rule_with('gw = "sipgw9"\ncap = 0\nweight = -1')
        + '\n[[rule.target]]\ngw = "sipgw1"\ncap = 0\nweight = -1\npriority = 0\n'
    )
    with pytest.raises(LcrError) as caught:
        parse_lcr_file(text, "rules.toml")
    message = str(caught.value)
    assert message.splitlines() == [
        "rules.toml: 4 problems",
        '  rule 3 (prefix "43"): target gw "sipgw9" is not a known gateway',
        '  rule 3 (prefix "43"): target gw "sipgw1": cap: ' + NO_CAPABILITY,
        '  rule 3 (prefix "43"): target gw "sipgw1": priority: 0 is less than 1 (1 is tried first)',
        '  rule 3 (prefix "43"): target gw "sipgw1": weight: -1 is negative',
    ]


def test_not_toml_and_unreadable_files(tmp_path: Path) -> None:
    problems = problems_of("[[gateway]\n")
    assert len(problems) == 1
    assert problems[0].startswith("not valid TOML: ")
    with pytest.raises(LcrError, match=r"missing\.toml: 1 problem\n  cannot read: "):
        load_lcr_file(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(LcrError, match="not UTF-8 text"):
        load_lcr_file(binary)
