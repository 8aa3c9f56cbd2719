"""SIP over WebSocket (RFC 7118): the WebSocket side of a ws:/wss: connection, sans I/O.

A WebSocket connection is a TCP (or TLS) connection of the connection table whose bytes
are cut into messages by this codec instead of the SIP stream framer: wsproto does the
HTTP upgrade and the framing; this module adds what RFC 7118 asks of a SIP server:

- the handshake must offer the ``sip`` subprotocol, and the answer selects it (§4.1);
  a handshake without it is refused with 400 naming the header, so a client that
  speaks something else learns why instead of getting a socket that ignores it;
- one WebSocket message is one SIP message, text or binary (§5.1), so no Content-Length
  framing: a message is cut at the WebSocket message boundary;
- a message ``"\\r\\n\\r\\n"`` is the RFC 5626 keep-alive ping some SIP stacks (SIP.js)
  send and is answered ``"\\r\\n"``, like on TCP; a WebSocket Ping is answered with a Pong
  at once (RFC 6455 §5.5.2);
- our own keep-alive (the LB pings every registered flow with CRLFCRLF) goes out as a
  WebSocket Ping: a browser answers that by itself, whereas a JavaScript SIP stack
  would try to parse a CRLFCRLF text message as SIP.

``feed`` returns the same items as the stream framer (messages, pings, pongs), so the
connection treats both alike; what the codec must send back (the handshake's answer, a
Pong, a Close) waits in ``outgoing``.
"""

from __future__ import annotations

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import RemoteProtocolError

from sipfleet.sip.parser import KeepAlivePing, KeepAlivePong, StreamItem

SUBPROTOCOL = "sip"
CRLF_PING = b"\r\n\r\n"
CRLF_PONG = b"\r\n"


class WebSocketCodec:
    """One server-side WebSocket connection carrying SIP."""

    def __init__(self, max_message_size: int) -> None:
        self._ws = WSConnection(ConnectionType.SERVER)
        self._max = max_message_size
        self._parts: list[bytes] = []
        self._size = 0
        self._outgoing = bytearray()
        self.refused: str | None = None  # why the handshake was refused
        self.closed = False  # a Close was sent or received: no more messages either way

    # -- in --------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[StreamItem]:
        """The SIP messages and keep-alives in ``data``; the handshake's answer, Pongs and
        Closes go to ``outgoing``. After ``closed`` the connection should be closed."""
        if self._finished():
            return []
        try:
            self._ws.receive_data(data)
        except RemoteProtocolError as exc:  # not a WebSocket handshake (h11 said why)
            self._refuse(exc.event_hint, f"not a WebSocket handshake: {exc}")
            return []
        items: list[StreamItem] = []
        for event in self._ws.events():
            self._on_event(event, items)
            if self._finished():
                break
        return items

    def _finished(self) -> bool:
        return self.closed

    def _on_event(self, event: Event, items: list[StreamItem]) -> None:
        if isinstance(event, Request):
            self._on_handshake(event)
        elif isinstance(event, TextMessage):
            self._on_part(event.data.encode(), event.message_finished, items)
        elif isinstance(event, BytesMessage):
            self._on_part(bytes(event.data), event.message_finished, items)
        elif isinstance(event, Ping):
            self._send(event.response())
        elif isinstance(event, Pong):
            items.append(KeepAlivePong())
        elif isinstance(event, CloseConnection):
            self._on_close(event)

    def _on_handshake(self, request: Request) -> None:
        if SUBPROTOCOL not in (name.lower() for name in request.subprotocols):
            offered = ", ".join(request.subprotocols) or "none"
            why = f"Sec-WebSocket-Protocol must offer 'sip' (RFC 7118), offered: {offered}"
            self._refuse(RejectConnection(status_code=400), why)
            return
        self._send(AcceptConnection(subprotocol=SUBPROTOCOL))

    def _refuse(self, answer: Event | None, why: str) -> None:
        """Answer the handshake with an HTTP error whose body says why, then close."""
        self.refused = why
        body = f"{why}\r\n".encode()
        status = answer.status_code if isinstance(answer, RejectConnection) else 400
        headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
        if self._ws.state is ConnectionState.CONNECTING:
            self._send(RejectConnection(status_code=status, headers=headers, has_body=True))
            self._send(RejectData(data=body))
        self.closed = True

    def _on_part(self, data: bytes, finished: bool, items: list[StreamItem]) -> None:
        self._size += len(data)
        if self._size > self._max:  # RFC 6455 §7.4.1: 1009, message too big
            self.close(CloseReason.MESSAGE_TOO_BIG, f"a SIP message is at most {self._max} bytes")
            return
        self._parts.append(data)
        if not finished:
            return
        message = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        if message == CRLF_PING:
            items.append(KeepAlivePing())
        elif message.strip(b"\r\n"):
            items.append(message)
        # a lone CRLF (a pong to nobody's ping) or an empty message: nothing to do

    def _on_close(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            self._send(event.response())
        elif self._ws.state is ConnectionState.OPEN:  # a frame wsproto could not parse
            self._send(CloseConnection(code=event.code, reason=event.reason))
        self.closed = True

    @property
    def pending(self) -> bool:
        """A message is partly read (for the slow-sender timeout)."""
        return bool(self._parts)

    # -- out -------------------------------------------------------------------------------
    def frame(self, data: bytes) -> bytes:
        """What to write for ``data`` (a SIP message, or a CRLF keep-alive): one text
        message (SIP is UTF-8 text; a body that is not is sent as binary), our
        CRLFCRLF ping as a WebSocket Ping."""
        if data == CRLF_PING:
            return self._ws.send(Ping())
        try:
            return self._ws.send(TextMessage(data=data.decode()))
        except UnicodeDecodeError:
            return self._ws.send(BytesMessage(data=data))

    @property
    def open(self) -> bool:
        return self._ws.state is ConnectionState.OPEN and not self.closed

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (the bytes wait in ``outgoing``)."""
        if self._ws.state is ConnectionState.OPEN:
            self._send(CloseConnection(code=code, reason=reason))
        self.closed = True

    def outgoing(self) -> bytes:
        """What must be written now, once."""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _send(self, event: Event) -> None:
        self._outgoing += self._ws.send(event)
