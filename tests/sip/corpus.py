"""Realistic SIP messages shared by the parser tests, fuzzers and benchmarks."""

from __future__ import annotations

SDP = (
    "v=0\r\n"
    "o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n"
    "s=Session SDP\r\n"
    "c=IN IP4 198.51.100.7\r\n"
    "t=0 0\r\n"
    "m=audio 49172 RTP/AVP 0 8 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)


def sip(head: str, body: str = "") -> bytes:
    """Build wire bytes from a head written with \\n line ends; Content-Length is filled in."""
    lines = head.strip("\n").split("\n")
    lines.append(f"Content-Length: {len(body.encode('latin-1'))}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")


INVITE = sip(
    """\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport
Max-Forwards: 70
Route: <sip:lb.example.com;lr>, <sip:proxy1.example.com;lr>
To: "Bob" <sip:bob@biloxi.example.com>
From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@198.51.100.7:5060;transport=udp>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO
Supported: replaces, timer, 100rel
User-Agent: ExamplePhone/1.2.3 (firmware 4.5.6)
Content-Type: application/sdp
""",
    SDP,
)

REGISTER = sip(
    """\
REGISTER sip:registrar.biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP bobspc.biloxi.example.com:5060;branch=z9hG4bKnashds7;rport
Max-Forwards: 70
To: Bob <sip:bob@biloxi.example.com>
From: Bob <sip:bob@biloxi.example.com>;tag=456248
Call-ID: 843817637684230@998sdasdh09
CSeq: 1826 REGISTER
Contact: <sip:bob@192.0.2.4:5060>;expires=3600;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";reg-id=1
Authorization: Digest username="bob", realm="biloxi.example.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="sip:registrar.biloxi.example.com", response="245f23415f11432b3434341c022", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001
Supported: path, outbound
Expires: 7200
""",  # noqa: E501 - header lines as long as phones send them
)

RESPONSE_180 = sip(
    """\
SIP/2.0 180 Ringing
Via: SIP/2.0/UDP proxy1.example.com;branch=z9hG4bK2d4790.1;received=192.0.2.3
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport=5060;received=198.51.100.7
Record-Route: <sip:proxy1.example.com;lr>
To: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf
From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:bob@192.0.2.4>
""",  # noqa: E501
)

OPTIONS = sip(
    """\
OPTIONS sip:carol@chicago.example.com SIP/2.0
Via: SIP/2.0/TCP pc33.atlanta.example.com;branch=z9hG4bKhjhs8ass877
Max-Forwards: 70
To: <sip:carol@chicago.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710
CSeq: 63104 OPTIONS
Contact: <sip:alice@pc33.atlanta.example.com>
Accept: application/sdp
""",
)

BYE = sip(
    """\
BYE sip:alice@198.51.100.7:5060 SIP/2.0
Via: SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKnashds10
Max-Forwards: 70
Route: <sip:proxy1.example.com;lr>
From: "Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf
To: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774
Call-ID: a84b4c76e66710@pc33.atlanta.example.com
CSeq: 231 BYE
""",
)

COMPACT = sip(
    """\
MESSAGE sip:user2@domain.example SIP/2.0
v: SIP/2.0/TCP user1pc.domain.example;branch=z9hG4bK776sgdkse
Max-Forwards: 70
f: sip:user1@domain.example;tag=49583
t: sip:user2@domain.example
i: asd88asd77a@1.2.3.4
CSeq: 1 MESSAGE
c: text/plain
""",
    "Watson, come here.",
)

ALL = {
    "invite": INVITE,
    "register": REGISTER,
    "response_180": RESPONSE_180,
    "options": OPTIONS,
    "bye": BYE,
    "compact": COMPACT,
}
