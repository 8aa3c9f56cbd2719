"""Creating the listening sockets: address family, SO_REUSEPORT, buffer sizes.

Sockets are made here rather than by asyncio so that a supervisor can bind them once
and hand one copy per worker process (``bind_for_workers``): the port is settled before
any worker starts (port 0 works) and a restarted worker gets its socket back, with the
datagrams and connections that waited in it meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Final

from sipfleet.config.listen import ListenAddress, Transport

TCP_BACKLOG = 1024


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def normalise_host(host: str) -> str:
    """``[::1]`` / ``0:0::1`` -> ``::1``; IPv4 and names unchanged."""
    if host.startswith("["):
        host = host[1:-1]
    if ":" in host:
        with contextlib.suppress(ValueError):
            return ipaddress.IPv6Address(host).compressed
    return host


# Hosts seen on the forwarding paths repeat; ip_address() raising for every name is slow.
_ip_cache: Final[dict[str, bool]] = {}
_IP_CACHE_MAX = 10_000  # bounded, so a flood of distinct names cannot grow it for ever


def is_ip(host: str) -> bool:
    """Whether ``host`` (without brackets) is an IPv4 or IPv6 address literal; memoised."""
    known = _ip_cache.get(host)
    if known is None:
        try:
            ipaddress.ip_address(host)
            known = True
        except ValueError:
            known = False
        if len(_ip_cache) < _IP_CACHE_MAX:
            _ip_cache[host] = known
    return known


def make_socket(
    address: ListenAddress, *, reuse_port: bool = False, buffer_size: int = 4 << 20
) -> socket.socket:
    """A bound, non-blocking UDP socket or listening TCP socket for ``address``."""
    kind = socket.SOCK_DGRAM if address.transport == "udp" else socket.SOCK_STREAM
    sock = socket.socket(family_of(address.host), kind)
    try:
        if sock.family == socket.AF_INET6:  # so IPv4 and IPv6 listeners can share a port
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:  # rebind at once after a restart (TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if kind == socket.SOCK_DGRAM:
            _ask_for_buffers(sock, buffer_size)
        _bind(sock, address)
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, address: ListenAddress) -> None:
    try:
        sock.bind((address.host, address.port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        why = "another copy of this role, or another program, listens there"
        raise OSError(exc.errno, f"{address}: {exc.strerror} ({why})") from None


def _ask_for_buffers(sock: socket.socket, size: int) -> None:
    """Large buffers absorb bursts; the kernel caps them at net.core.[rw]mem_max."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def listen_address_of(sock: socket.socket) -> ListenAddress:
    """The address a socket is bound to, port 0 resolved."""
    host, port = sock.getsockname()[:2]
    transport: Transport = "udp" if sock.type == socket.SOCK_DGRAM else "tcp"
    return ListenAddress(transport, normalise_host(host), port)


def bind_all(
    addresses: Sequence[ListenAddress],
    *,
    reuse_port: bool = False,
    buffer_size: int = 4 << 20,
) -> list[socket.socket]:
    """One socket per address. Port 0 is resolved once per host: a UDP and a TCP
    listener on the same host both asking for port 0 get the same port when it is free
    for both, so a Via sent-by is right for either transport."""
    chosen: dict[str, int] = {}
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.append(_bind_one(address, chosen, reuse_port, buffer_size))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_one(
    address: ListenAddress, chosen: dict[str, int], reuse_port: bool, buffer_size: int
) -> socket.socket:
    if address.port == 0 and address.host in chosen:
        same_port = ListenAddress(address.transport, address.host, chosen[address.host])
        with contextlib.suppress(OSError):
            return make_socket(same_port, reuse_port=reuse_port, buffer_size=buffer_size)
    sock = make_socket(address, reuse_port=reuse_port, buffer_size=buffer_size)
    if address.port == 0:
        chosen.setdefault(address.host, sock.getsockname()[1])
    return sock


def bind_for_workers(
    addresses: Sequence[ListenAddress], workers: int, *, buffer_size: int = 4 << 20
) -> list[list[socket.socket]]:
    """``workers`` sets of sockets sharing each address through SO_REUSEPORT.

    The first set settles the ports (port 0 included); the others bind the same ones.
    The kernel spreads datagrams and new connections over the sets by address hash.
    """
    settled = _claim(addresses)
    first = bind_all(settled, reuse_port=True, buffer_size=buffer_size)
    sets = [first]
    try:
        for _ in range(workers - 1):
            sets.append(bind_all(settled, reuse_port=True, buffer_size=buffer_size))
    except BaseException:
        for sock in (s for group in sets for s in group):
            sock.close()
        raise
    return sets


def _claim(addresses: Sequence[ListenAddress]) -> list[ListenAddress]:
    """The addresses, port 0 settled, after binding each once without SO_REUSEPORT:
    another process holding one (a second copy of a role, whose SO_REUSEPORT would let
    it take a share of the traffic unseen) makes this fail with EADDRINUSE."""
    probes = bind_all(addresses)
    try:
        return [listen_address_of(sock) for sock in probes]
    finally:
        for sock in probes:
            sock.close()


def keep_only(sets: list[list[socket.socket]], index: int) -> list[socket.socket]:
    """In worker ``index``: close the other workers' copies, return its own."""
    for at, group in enumerate(sets):
        if at != index:
            for sock in group:
                sock.close()
    return sets[index]


# Classic BPF, for SO_ATTACH_REUSEPORT_CBPF: the program sees the UDP payload from offset
# 0, and its return value picks the socket of the SO_REUSEPORT group (in the order they
# were bound; a load past the end of the datagram ends it with 0).
_SO_ATTACH_REUSEPORT_CBPF = 51
_LD_W_ABS, _LD_B_IND = 0x20, 0x50
_LD_IMM, _LD_MEM, _LD_LEN = 0x00, 0x60, 0x80
_LDX_IMM, _LDX_MEM, _ST, _STX, _TAX, _TXA = 0x01, 0x61, 0x02, 0x03, 0x07, 0x87
_ADD_K, _XOR_X, _MUL_K, _RSH_K, _MOD_K = 0x04, 0xAC, 0x24, 0x74, 0x94
_JA, _JEQ_K, _JGE_K, _JGE_X, _RET_A = 0x05, 0x15, 0x35, 0x3D, 0x16
_SKF_AD_RANDOM = -0x1000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM: a random 32-bit number
_RESPONSE = 0x5349502F  # b"SIP/", the start of a status line, as a big-endian word
# Each response is dealt by the branch of our own Via, which names its transaction: found
# by the end of our branches' prefix ("z9hG4bK-sf", builders.stateless_branch) anywhere in
# the first bytes. Not by the lines after the status line: a UAS may write the Vias it
# copies on one line, comma-separated, so the proxy's own 100 Trying and the 180 it relays
# for the same transaction differ in those bytes (2026-12-05: the 100 reached the caller
# after the 200 in 1 % of calls through two workers).
_BRANCH_MARK = 0x4B2D7366  # b"K-sf": the end of "z9hG4bK-sf"
_MARK_OFFSETS = range(16, 200)  # where the mark may start
_BRANCH_BYTES = 48  # at most this many of the branch after the mark are hashed
_LAST_TOKEN_BELOW = 0x2D  # a byte below "-" (",", CR, space) or a ";" ends the branch
_SHORTEST_RESPONSE = _MARK_OFFSETS[-1] + 4  # any response with its mandatory headers is longer
# One instruction: (code, k, where jt goes, where jf goes); a jump names a label, resolved
# to the count of instructions it skips (BPF_JA: k, conditional jumps: jt/jf).
_Insn = tuple[int, int, str | None, str | None]


def transaction_spread_program(group_size: int) -> bytes:
    """Requests at random; each response by a hash of the branch of our Via (the LB's,
    on top), so the 100, 180 and 200 of one transaction reach one worker, in the order
    they came, while the transactions still spread over the workers. Dealt at random, a
    200 could overtake the 180 sent just before it (another worker's queue was
    shorter): harmless to a phone, but a reordering no hop should add. A datagram too
    short or without our branch in reach: at random. (A load past the end would end the
    program with 0, the first worker, so every load is checked against the length.)"""
    code: list[_Insn | str] = [  # a str is a label
        (_LD_LEN, 0, None, None),
        (_JGE_K, _SHORTEST_RESPONSE, None, "bail"),
        (_LD_W_ABS, 0, None, None),
        (_JEQ_K, _RESPONSE, "scan", None),
        "bail",  # (a conditional jump reaches 255 instructions ahead; JA any distance)
        (_JA, 0, "random", None),
        "scan",
    ]
    for at in _MARK_OFFSETS:  # unrolled: classic BPF has no loops
        code += [
            (_LD_W_ABS, at, None, None),
            (_JEQ_K, _BRANCH_MARK, None, f"not{at}"),
            (_LDX_IMM, at + 4, None, None),  # the branch's own part starts here
            (_JA, 0, "found", None),
            f"not{at}",
        ]
    code += [
        (_JA, 0, "random", None),  # not our Via's branch: not a response to us
        "found",
        (_STX, 15, None, None),  # M[15]: where the branch's own part starts
        (_TXA, 0, None, None),
        (_ADD_K, _BRANCH_BYTES, None, None),
        (_TAX, 0, None, None),
        (_LD_LEN, 0, None, None),
        (_JGE_X, 0, "inside", None),  # every byte hashed lies inside the datagram
        (_JA, 0, "random", None),
        "inside",
        (_LD_IMM, 0, None, None),
        (_ST, 0, None, None),  # M[0]: the hash
        (_LDX_MEM, 15, None, None),
    ]
    for byte in range(_BRANCH_BYTES):
        code += [
            (_LD_B_IND, byte, None, None),
            (_JGE_K, _LAST_TOKEN_BELOW, None, f"end{byte}"),
            (_JEQ_K, ord(";"), f"end{byte}", None),
            (_LDX_MEM, 0, None, None),
            (_XOR_X, 0, None, None),
            (_MUL_K, 0x9E3779B1, None, None),  # Fibonacci hashing: low bits carried upward
            (_ST, 0, None, None),
            (_LDX_MEM, 15, None, None),
            (_JA, 0, f"next{byte}", None),
            f"end{byte}",
            (_JA, 0, "hashed", None),
            f"next{byte}",
        ]
    code += [
        "hashed",
        (_LD_MEM, 0, None, None),
        (_RSH_K, 16, None, None),  # the well-mixed high half folded into the low one
        (_LDX_MEM, 0, None, None),
        (_XOR_X, 0, None, None),
        (_MOD_K, group_size, None, None),
        (_RET_A, 0, None, None),
        "random",
        (_LD_W_ABS, _SKF_AD_RANDOM, None, None),
        (_MOD_K, group_size, None, None),
        (_RET_A, 0, None, None),
    ]
    return _assemble(code)


def _assemble(code: list[_Insn | str]) -> bytes:
    labels: dict[str, int] = {}
    count = 0
    for item in code:
        if isinstance(item, str):
            labels[item] = count
        else:
            count += 1
    program: list[bytes] = []
    for item in code:
        if isinstance(item, str):
            continue
        op, k, first, second = item
        at = len(program)
        jt, jf = _skip(labels, first, at), _skip(labels, second, at)
        if op == _JA:
            k, jt, jf = jt, 0, 0
        elif not (jt < 256 and jf < 256):
            raise ValueError(f"BPF jump out of reach at {at}")
        program.append(struct.pack("=HBBI", op, jt, jf, k & 0xFFFFFFFF))
    return b"".join(program)


def _skip(labels: dict[str, int], label: str | None, at: int) -> int:
    """How many instructions a jump at ``at`` to ``label`` skips (0: the next one)."""
    return 0 if label is None else labels[label] - at - 1


def spread_at_random(sock: socket.socket, group_size: int) -> None:
    """Deal the datagrams of ``sock``'s SO_REUSEPORT group to its sockets at random instead
    of by address hash: one busy peer (a proxy, a load generator) then keeps every worker
    busy, not one. Responses go by transaction (``transaction_spread_program``). Raises
    OSError where the kernel does not support it."""
    program = transaction_spread_program(group_size)
    _attach_reuseport_program(sock, ctypes.create_string_buffer(program), len(program) // 8)


def _attach_reuseport_program(
    sock: socket.socket, program: ctypes.Array[ctypes.c_char], instructions: int
) -> None:
    # The kernel reads the program through its address during setsockopt. The buffer is
    # an argument so that the caller holds it until then: compiled code (sipfleet.native)
    # drops a local right after its last use, here that would be addressof.
    fprog = struct.pack("HL", instructions, ctypes.addressof(program))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_REUSEPORT_CBPF, fprog)
