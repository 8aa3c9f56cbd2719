"""Digest authentication with self-verifying nonces (sipfleet.sip.auth)."""

from __future__ import annotations

import pytest

from sipfleet.sip import Request
from sipfleet.sip.auth import DigestAuthority, Verdict
from sipfleet.sip.digest import compute_ha1, compute_response, format_credentials, parse_auth_header

REALM = "example.com"
URI = "sip:example.com"
CALL_ID = "reg-1@192.0.2.10"
T0 = 1_800_000_000.0


def register(call_id: str = CALL_ID, credentials: str | None = None) -> Request:
    headers = [
        ("Via", "SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1"),
        ("From", "<sip:alice@example.com>;tag=1"),
        ("To", "<sip:alice@example.com>"),
        ("Call-ID", call_id),
        ("CSeq", "2 REGISTER"),
    ]
    if credentials:
        headers.append(("Authorization", credentials))
    return Request.build("REGISTER", URI, headers)


def answer(
    challenge: str,
    password: str = "secret",
    nc: str = "00000001",
    username: str = "alice",
    uri: str = URI,
) -> str:
    parsed = parse_auth_header(challenge)
    algorithm = parsed.algorithm
    ha1 = compute_ha1(username, REALM, password, algorithm)
    nonce = parsed.nonce or ""
    response = compute_response(ha1, "REGISTER", uri, nonce, algorithm, "auth", nc, "c0ffee")
    return format_credentials(
        username, REALM, nonce, uri, response, algorithm, "auth", nc, "c0ffee"
    )


def ha1s(password: str = "secret") -> dict[str, str]:
    return {alg: compute_ha1("alice", REALM, password, alg) for alg in ("MD5", "SHA-256")}


@pytest.fixture
def authority() -> DigestAuthority:
    return DigestAuthority(b"cluster-secret", nonce_lifetime=300)


def verify(
    authority: DigestAuthority,
    credentials: str,
    now: float = T0,
    call_id: str = CALL_ID,
    password: str = "secret",
) -> Verdict:
    request = register(call_id, credentials)
    found = authority.credentials_for(request, REALM)
    assert found is not None
    return authority.verify(request, found, ha1s(password), now).verdict


def test_one_challenge_per_algorithm_sha256_first(authority: DigestAuthority) -> None:
    challenges = authority.challenges(REALM, CALL_ID, T0)
    algorithms = [parse_auth_header(c).algorithm for c in challenges]
    assert algorithms == ["SHA-256", "MD5"]
    assert all('qop="auth"' in c for c in challenges)


@pytest.mark.parametrize("index", [0, 1])
def test_right_password_is_accepted_with_either_algorithm(
    authority: DigestAuthority, index: int
) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[index]
    assert verify(authority, answer(challenge)) is Verdict.OK


def test_any_node_with_the_same_secret_verifies(authority: DigestAuthority) -> None:
    other_node = DigestAuthority(b"cluster-secret")
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    assert verify(other_node, answer(challenge)) is Verdict.OK


def test_foreign_secret_rejects(authority: DigestAuthority) -> None:
    foreign = DigestAuthority(b"another-cluster")
    challenge = foreign.challenges(REALM, CALL_ID, T0)[0]
    assert verify(authority, answer(challenge)) is Verdict.REJECTED


def test_wrong_password_and_unknown_user_look_the_same(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    assert verify(authority, answer(challenge, password="guess")) is Verdict.REJECTED
    request = register(credentials=answer(challenge))
    found = authority.credentials_for(request, REALM)
    assert found is not None
    assert authority.verify(request, found, None, T0).verdict is Verdict.REJECTED


def test_replayed_nonce_count_is_rejected(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    assert verify(authority, answer(challenge, nc="00000001")) is Verdict.OK
    assert verify(authority, answer(challenge, nc="00000001"), T0 + 1) is Verdict.REJECTED
    assert verify(authority, answer(challenge, nc="00000002"), T0 + 2) is Verdict.OK


def test_expired_nonce_with_right_digest_is_stale(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    assert verify(authority, answer(challenge), now=T0 + 301) is Verdict.STALE
    assert verify(authority, answer(challenge, password="guess"), now=T0 + 301) is Verdict.REJECTED


def test_nonce_is_bound_to_the_call_id(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    assert verify(authority, answer(challenge), call_id="other@host") is Verdict.REJECTED


def test_digest_uri_may_name_the_next_hop(authority: DigestAuthority) -> None:
    """sipp and some UAs put the next hop, not the Request-URI, in the digest uri."""
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    credentials = answer(challenge, uri="sip:127.0.0.1:5060")
    assert verify(authority, credentials) is Verdict.OK


def test_response_digest_covers_the_uri_it_names(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    credentials = answer(challenge).replace(f'uri="{URI}"', 'uri="sip:other.example.net"')
    assert verify(authority, credentials) is Verdict.REJECTED


def test_credentials_without_qop_are_rejected(authority: DigestAuthority) -> None:
    nonce = parse_auth_header(authority.challenges(REALM, CALL_ID, T0)[1]).nonce or ""
    ha1 = compute_ha1("alice", REALM, "secret")
    response = compute_response(ha1, "REGISTER", URI, nonce)
    credentials = format_credentials("alice", REALM, nonce, URI, response)
    assert verify(authority, credentials) is Verdict.REJECTED


def test_credentials_for_another_realm_are_ignored(authority: DigestAuthority) -> None:
    challenge = authority.challenges(REALM, CALL_ID, T0)[0]
    request = register(credentials=answer(challenge).replace(REALM, "elsewhere.net"))
    assert authority.credentials_for(request, REALM) is None


def test_nonce_count_table_is_bounded() -> None:
    authority = DigestAuthority(b"s", max_tracked_nonces=10)
    for i in range(50):
        call_id = f"call-{i}"
        challenge = authority.challenges(REALM, call_id, T0)[0]
        assert verify(authority, answer(challenge), call_id=call_id) is Verdict.OK
    assert len(authority._last_nc) <= 10
