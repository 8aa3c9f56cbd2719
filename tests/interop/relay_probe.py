"""A hostile client, run inside an embedded cluster's network namespace by
test_closed_by_default.py: the open-relay and flow-token-replay attempts of the issue
"Closed by default", each sent to the LB as an attacker would, over UDP and TCP.

It prints one JSON object: for each attempt, the final status the attacker got (None: no
answer) and whether anything reached the address the attacker chose (the "victim"
listener at 127.0.0.9:5099, or the registered phone's own socket).

    python -m tests.interop.relay_probe LB_PORT PROXY_PORT USER@DOMAIN PASSWORD
    python -m tests.interop.relay_probe --edge LB_PORT

``--edge`` sends what used to cost the LB a traceback: a UDP request that outgrows a
datagram once the LB adds its headers, and CRLF keep-alive pings on TCP connections
that the client then resets; it prints the status the large request got.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import sys
import time

from sipfleet.sip.digest import compute_ha1, compute_response

VICTIM = ("127.0.0.9", 5099)
WAIT_S = 1.0  # for a final answer
LISTEN_S = 0.3  # then for anything relayed (a relayed request would have come first)


class Client:
    """A SIP client on one UDP socket or TCP connection, from 127.0.0.1."""

    def __init__(self, transport: str, lb: tuple[str, int]) -> None:
        self.transport = transport
        self.lb = lb
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if transport == "tcp":
            self.sock.connect(lb)
        self.port = self.sock.getsockname()[1]
        self.buffer = b""

    def send(self, text: str) -> None:
        data = text.encode("latin-1")
        if self.transport == "udp":
            self.sock.sendto(data, self.lb)
        else:
            self.sock.sendall(data)

    def final(self, timeout: float = WAIT_S) -> str | None:
        """The next final response's text (provisional ones skipped)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self._next(left)
            if message is None:
                return None
            status = re.match(r"SIP/2\.0 (\d{3})", message)
            if status and int(status.group(1)) >= 200:
                return message
        return None

    def _next(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            if self.transport == "udp":
                return self.sock.recv(65535).decode("latin-1")
            while b"\r\n\r\n" not in self.buffer:
                chunk = self.sock.recv(65535)
                if not chunk:
                    return None
                self.buffer += chunk
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^(?:content-length|l)\s*:\s*(\d+)", head)
            size = int(length.group(1)) if length else 0
            while len(rest) < size:
                rest += self.sock.recv(65535)
            self.buffer = rest[size:]
            return (head + b"\r\n\r\n" + rest[:size]).decode("latin-1")
        except (TimeoutError, OSError):
            return None

    def request(self, method: str, uri: str, *, headers: list[str], body: str = "") -> str:
        branch = "z9hG4bK" + secrets.token_hex(6)
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1:{self.port};branch={branch};rport",
            "Max-Forwards: 70",
            *headers,
            f"Content-Length: {len(body)}",
        ]
        return "\r\n".join(lines) + "\r\n\r\n" + body


def status_of(message: str | None) -> int | None:
    return int(message.split()[1]) if message else None


def register(lb: tuple[str, int], aor: str, password: str) -> tuple[Client, str]:
    """Registers ``aor`` (digest MD5) from a UDP socket; returns it and the flow token the
    LB put in the Path (echoed: we say Supported: path)."""
    phone = Client("udp", lb)
    user, domain = aor.split("@")
    call_id = secrets.token_hex(8)
    headers = [
        f"From: <sip:{aor}>;tag={secrets.token_hex(4)}",
        f"To: <sip:{aor}>",
        f"Call-ID: {call_id}",
        f"Contact: <sip:{user}@127.0.0.1:{phone.port}>",
        "Supported: path",
        "Expires: 300",
    ]
    phone.send(phone.request("REGISTER", f"sip:{domain}", headers=[*headers, "CSeq: 1 REGISTER"]))
    challenge = phone.final() or ""
    realm = re.search(r'realm="([^"]+)"', challenge)
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    if not (realm and nonce):
        raise SystemExit(f"no challenge: {challenge!r}")
    ha1 = compute_ha1(user, realm.group(1), password)
    cnonce = secrets.token_hex(4)
    response = compute_response(
        ha1, "REGISTER", f"sip:{domain}", nonce.group(1), "MD5", "auth", "00000001", cnonce
    )
    authorization = (
        f'Authorization: Digest username="{user}", realm="{realm.group(1)}", '
        f'nonce="{nonce.group(1)}", uri="sip:{domain}", response="{response}", algorithm=MD5, '
        f'qop=auth, nc=00000001, cnonce="{cnonce}"'
    )
    phone.send(
        phone.request(
            "REGISTER", f"sip:{domain}", headers=[*headers, "CSeq: 2 REGISTER", authorization]
        )
    )
    ok = phone.final() or ""
    token = re.search(r"(?im)^Path:\s*<sip:([\w-]+)@", ok)
    if status_of(ok) != 200 or token is None:
        raise SystemExit(f"not registered: {ok!r}")
    return phone, token.group(1)


def heard(sock: socket.socket) -> bool:
    """Anything arrived on ``sock`` (UDP) within LISTEN_S; drains it."""
    sock.settimeout(LISTEN_S)
    got = False
    try:
        while True:
            sock.recv(65535)
            got = True
            sock.settimeout(0.05)
    except (TimeoutError, OSError):
        return got


def attempt(
    transport: str,
    lb: tuple[str, int],
    method: str,
    uri: str,
    routes: list[str],
    listener: socket.socket,
) -> dict[str, object]:
    attacker = Client(transport, lb)
    try:
        headers = [
            "From: <sip:ceo@bank.example>;tag=a1",
            "To: <sip:anyone@127.0.0.9>;tag=made-up",
            f"Call-ID: relay-{secrets.token_hex(6)}",
            f"CSeq: 1 {method}",
            *[f"Route: {route}" for route in routes],
            "Content-Type: text/plain",
        ]
        attacker.send(attacker.request(method, uri, headers=headers, body="wire the money now"))
        answer = attacker.final()
        return {"status": status_of(answer), "relayed": heard(listener)}
    finally:
        attacker.sock.close()


def edge(lb: tuple[str, int]) -> dict[str, object]:
    client = Client("udp", lb)
    headers = [
        "From: <sip:alice@example.com>;tag=big",
        "To: <sip:bob@example.com>",
        f"Call-ID: big-{secrets.token_hex(6)}",
        "CSeq: 1 MESSAGE",
        "Content-Type: text/plain",
    ]
    empty = client.request("MESSAGE", "sip:bob@example.com", headers=headers)
    body = "x" * (65_507 - len(empty) - 8)  # fits one datagram; not once the LB adds a Via
    client.send(client.request("MESSAGE", "sip:bob@example.com", headers=headers, body=body))
    large = status_of(client.final())
    resets = 0
    for _ in range(20):  # pings, then a reset (RST: SO_LINGER 0) before reading the pongs
        pinger = socket.create_connection(lb)
        pinger.sendall(b"\r\n\r\n" * 50)
        pinger.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        pinger.close()
        resets += 1
    # The LB answers an OPTIONS for itself once it has read what came before.
    options = [
        "From: <sip:probe@example.com>;tag=p",
        "To: <sip:127.0.0.1>",
        f"Call-ID: sync-{secrets.token_hex(6)}",
        "CSeq: 1 OPTIONS",
    ]
    client.send(client.request("OPTIONS", f"sip:{lb[0]}:{lb[1]}", headers=options))
    return {"large": large, "resets": resets, "after": status_of(client.final())}


def main(argv: list[str]) -> None:
    if argv[0] == "--edge":
        print(json.dumps(edge(("127.0.0.1", int(argv[1])))))
        return
    lb_port, proxy_port, aor, password = int(argv[0]), int(argv[1]), argv[2], argv[3]
    lb = ("127.0.0.1", lb_port)
    victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    victim.bind(VICTIM)
    target = f"sip:anyone@{VICTIM[0]}:{VICTIM[1]}"
    proxy = f"<sip:127.0.0.1:{proxy_port};lr>"
    results: dict[str, object] = {}
    for transport in ("udp", "tcp"):
        for method in ("MESSAGE", "INVITE", "BYE"):
            variants = {
                "route-to-proxy": (target, [proxy]),
                "lb-then-proxy": (target, [f"<sip:127.0.0.1:{lb_port};lr>", proxy]),
                "strict-route": (f"sip:127.0.0.1:{proxy_port}", [f"<sip:{VICTIM[0]}:{VICTIM[1]}>"]),
            }
            for name, (uri, routes) in variants.items():
                results[f"{transport} {method} {name}"] = attempt(
                    transport, lb, method, uri, routes, victim
                )
    phone, token = register(lb, aor, password)
    phone_uri = f"sip:{aor.split('@')[0]}@127.0.0.1:{phone.port}"
    for transport in ("udp", "tcp"):
        for method in ("MESSAGE", "INVITE"):
            route = [f"<sip:{token}@127.0.0.1:{lb_port};lr>"]
            results[f"{transport} {method} replayed-token"] = attempt(
                transport, lb, method, phone_uri, route, phone.sock
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
