"""The sans-IO SIP core: messages, URIs, headers, digest, transactions. No sockets, no clocks."""

from sipfleet.sip.address import Address, parse_address
from sipfleet.sip.errors import ParseError
from sipfleet.sip.message import CSeq, Message, Request, Response
from sipfleet.sip.parser import StreamFramer, parse_message, validate_request, validate_response
from sipfleet.sip.uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri
from sipfleet.sip.via import Via, parse_via

__all__ = [
    "AbsoluteUri",
    "Address",
    "CSeq",
    "Message",
    "ParseError",
    "Request",
    "Response",
    "SipUri",
    "StreamFramer",
    "TelUri",
    "Uri",
    "Via",
    "parse_address",
    "parse_message",
    "parse_uri",
    "parse_via",
    "validate_request",
    "validate_response",
]
