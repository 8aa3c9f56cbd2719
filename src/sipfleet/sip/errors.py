"""The one error the SIP parser raises, carrying the answer a server should give."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipfleet.sip.message import Message


class ParseError(ValueError):
    """A message, or one of its headers, is not valid SIP.

    ``status`` and ``reason`` are what a server answers when the broken message is a
    request it can still answer (400 names the defect; 505 for an unknown SIP version,
    416 for an unsupported URI scheme, 513 for an oversized message). ``message`` is the
    partially parsed message when there is one: the response builder copies its raw
    Via/From/To/Call-ID/CSeq lines, so even a defective request can be answered.
    """

    def __init__(self, reason: str, status: int = 400, message: Message | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"
