"""The transaction table: routes messages to transactions and creates them (sans-IO)."""

from __future__ import annotations

from typing import Any

from sipfleet.sip.message import Message, Request, Response, index_of
from sipfleet.sip.transaction.actions import Action
from sipfleet.sip.transaction.base import Key, Transaction
from sipfleet.sip.transaction.client import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ClientTransaction,
)
from sipfleet.sip.transaction.matching import (
    client_key,
    is_rfc3261_key,
    request_key,
    response_key,
    rfc2543_key,
)
from sipfleet.sip.transaction.server import (
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    ServerTransaction,
)
from sipfleet.sip.transaction.timers import DEFAULT_TIMERS, Timers
from sipfleet.sip.via import BRANCH_PARAM


class TransactionLayer:
    """Every live transaction of a process, by key.

    ``receive`` hands a message to its transaction and returns the actions, or None
    when no transaction matches (a new request, a stray response, an ACK for a 2xx):
    then the TU decides, and may ``create_server``. Terminated transactions leave the
    table by themselves, whoever drove them.
    """

    __slots__ = ("_clients", "_servers", "timers")

    def __init__(self, timers: Timers = DEFAULT_TIMERS) -> None:
        self.timers = timers
        self._clients: dict[Key, ClientTransaction] = {}
        self._servers: dict[Key, ServerTransaction] = {}

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    @property
    def server_count(self) -> int:
        return len(self._servers)

    # -- incoming messages ----------------------------------------------------------------
    def receive(self, message: Message) -> list[Action] | None:
        """Feed a received message to its transaction. Raises ParseError when a header
        that matching needs (Via, CSeq; From, To, Call-ID for RFC 2543) does not parse."""
        if isinstance(message, Response):
            client = self.match_response(message)
            return None if client is None else client.receive(message)
        assert isinstance(message, Request)
        server = self.match_request(message)
        return None if server is None else server.receive(message)

    def match_response(self, response: Response) -> ClientTransaction | None:
        client = self._echoing(response)
        if client is not None:
            return client
        key = response_key(response)
        return None if key is None else self._clients.get(key)

    def _echoing(self, response: Response) -> ClientTransaction | None:
        """The client transaction whose request's top Via line and CSeq line the response
        carries unchanged, as a response does (§8.2.6.2: Via and CSeq copied), else None.

        ``response_key`` parses both (the Via and the CSeq are most of a relayed
        response's matching cost); here the branch and method are only cut out of the
        lines to find a candidate, which the two lines then confirm: equal to the lines of
        the request the transaction sent (a Via and a CSeq that parsed, its key made from
        them), they parse to that key, so the full key would find the same transaction.
        The Via line may also go on with the Vias below ours joined to it by commas (sipp
        echoes them so). Any other difference (a ``received`` added, a compact name,
        spacing, a request let go of) leaves it to the full key."""
        keys = response.keys
        via_at, cseq_at = index_of(keys, "via"), index_of(keys, "cseq")
        if via_at < 0 or cseq_at < 0:
            return None
        via_line = response.lines[via_at]
        cseq_line = response.lines[cseq_at]
        start = via_line.find(BRANCH_PARAM)
        if start < 0:
            return None
        start += len(BRANCH_PARAM)
        end = via_line.find(";", start)
        branch = via_line[start:] if end < 0 else via_line[start:end]
        if "," in branch:  # the last parameter of ours, and the next Via joined on
            branch = branch[: branch.find(",")]
        method = cseq_line[cseq_line.rfind(" ") + 1 :]
        client = self._clients.get((branch, method))
        if client is None:
            return None
        sent = client.request
        sent_via_at, sent_cseq_at = index_of(sent.keys, "via"), index_of(sent.keys, "cseq")
        if sent_via_at < 0 or sent_cseq_at < 0:
            return None  # let go of (forget_request)
        if sent.lines[sent_cseq_at] != cseq_line:
            return None
        ours = sent.lines[sent_via_at]
        if via_line == ours or _leads(via_line, ours):
            return client
        return None

    def serves(self, key: Key) -> bool:
        """Whether a server transaction of ``key`` (``request_key``) is alive: an ACK
        with an RFC 3261 key matches it, and nothing else does (the proxy's fast ACK)."""
        return key in self._servers

    def match_request(self, request: Request) -> ServerTransaction | None:
        key = request_key(request)
        server = self._servers.get(key)
        if request.method == "ACK" and not is_rfc3261_key(key):
            return self._match_rfc2543_ack(request, server)
        return server

    def _match_rfc2543_ack(
        self, ack: Request, same_tag: ServerTransaction | None
    ) -> ServerInviteTransaction | None:
        """§17.2.3: the ACK's To tag is that of our final response. A re-INVITE had it
        already (``same_tag``); an initial INVITE had none."""
        to_tag = ack.to.tag
        server = same_tag
        if server is None and to_tag is not None:
            server = self._servers.get(rfc2543_key(ack, "INVITE", None))
        if isinstance(server, ServerInviteTransaction) and server.final_to_tag == to_tag:
            return server
        return None

    def cancel_target(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2), if it is alive."""
        server = self._servers.get(request_key(cancel, "INVITE"))
        return server if isinstance(server, ServerInviteTransaction) else None

    # -- new transactions -----------------------------------------------------------------
    def create_client(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        peer: Any = None,
    ) -> tuple[ClientTransaction, list[Action]]:
        """Start a client transaction for a request we send (its top Via carries our
        branch). ``reliable`` defaults to what that Via's transport says. Returns the
        transaction and its first actions: send the request, arm the timers."""
        # Each class named in its own call: compiled, that is a direct call to its
        # constructor, where a class picked first is called through the generic path.
        client: ClientTransaction
        if request.method == "INVITE":
            client = ClientInviteTransaction(
                request, reliable=reliable, timers=self.timers, peer=peer
            )
        else:
            client = ClientNonInviteTransaction(
                request, reliable=reliable, timers=self.timers, peer=peer
            )
        branch = request.top_via.branch
        assert branch is not None  # the transaction checked it
        self._add(self._clients, client_key(branch, request.method), client)
        return client, client.start()

    def create_server(
        self,
        request: Request,
        *,
        reliable: bool | None = None,
        peer: Any = None,
    ) -> ServerTransaction:
        """A server transaction for a new request (not an ACK), after ``receive`` found
        none. The TU answers through its ``respond``."""
        server: ServerTransaction  # each class called by name: see create_client
        if request.method == "INVITE":
            server = ServerInviteTransaction(
                request, reliable=reliable, timers=self.timers, peer=peer
            )
        else:
            server = ServerNonInviteTransaction(
                request, reliable=reliable, timers=self.timers, peer=peer
            )
        self._add(self._servers, request_key(request), server)
        return server

    @staticmethod
    def _add(table: dict[Key, Any], key: Key, transaction: Transaction) -> None:
        if key in table:
            raise ValueError(f"a transaction with this key exists: {table[key]!r}")
        transaction.key = key
        transaction._table = table
        table[key] = transaction


def _leads(line: str, ours: str) -> bool:
    """Whether ``line`` is the Via line ``ours`` with more Vias joined after a comma, so
    that its first value (``Message.top_via``: ``split_first``) is the value of ``ours``:
    nothing in either that makes ``split_first`` look further (a quote, an angle
    bracket, a folded line, a comma in ``ours``)."""
    if len(line) <= len(ours) or line[len(ours)] != "," or not line.startswith(ours):
        return False
    return "," not in ours and '"' not in line and "<" not in line and "\n" not in line
