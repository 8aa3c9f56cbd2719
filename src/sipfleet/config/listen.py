"""Listen addresses: ``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:127.0.0.1:5061``,
``ws:127.0.0.1:8080``, ``wss:127.0.0.1:8443`` (SIP over WebSocket, RFC 7118)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

Transport = Literal["udp", "tcp", "tls", "ws", "wss"]
STREAM_TRANSPORTS = ("tcp", "tls", "ws", "wss")
TRANSPORTS = ("udp", *STREAM_TRANSPORTS)


@dataclass(frozen=True, slots=True)
class ListenAddress:
    transport: Transport
    host: str  # without IPv6 brackets
    port: int  # 0: any free port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            lambda value: value if isinstance(value, ListenAddress) else parse_listen(value),
            serialization=core_schema.to_string_ser_schema(),
        )


def parse_listen(text: object) -> ListenAddress:
    """Parse ``transport:host:port``; raises ValueError naming the defect."""
    if not isinstance(text, str):
        raise ValueError("a listen address is a string like 'udp:127.0.0.1:5060'")
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or transport not in TRANSPORTS:
        raise ValueError(
            f"{text!r}: transport must be udp, tcp, tls, ws or wss (like 'udp:127.0.0.1:5060')"
        )
    if rest.startswith("["):
        host, close, port_text = rest[1:].partition("]")
        if not close or not port_text.startswith(":"):
            raise ValueError(f"{text!r}: write IPv6 as [addr]:port")
        port_text = port_text[1:]
    else:
        host, _, port_text = rest.rpartition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: host must be an IP address, not {host!r}") from None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return ListenAddress(transport, host, int(port_text))  # type: ignore[arg-type]
