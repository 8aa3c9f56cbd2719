"""Timer names and values of RFC 3261 §17 (Table 4 of Appendix A) and RFC 6026."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

# Transports that deliver reliably: no retransmissions, and the wait-for-stragglers
# timers (D, I, J, K) are zero (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
RELIABLE_TRANSPORTS = frozenset({"TCP", "TLS", "SCTP", "TLS-SCTP", "WS", "WSS"})


def is_reliable(transport: str) -> bool:
    """Whether a Via transport token names a reliable transport."""
    return transport.upper() in RELIABLE_TRANSPORTS


class Timer(StrEnum):
    """The transaction timers, named as in the RFCs."""

    A = "A"  # client INVITE: request retransmission (unreliable only)
    B = "B"  # client INVITE: transaction timeout
    C = "C"  # proxy (RFC 3261 §16.6 step 11, §16.8): an INVITE branch's; the TU arms it
    D = "D"  # client INVITE: wait for response retransmissions in Completed
    E = "E"  # client non-INVITE: request retransmission (unreliable only)
    F = "F"  # client non-INVITE: transaction timeout
    K = "K"  # client non-INVITE: wait for response retransmissions in Completed
    G = "G"  # server INVITE: final response retransmission (unreliable only)
    H = "H"  # server INVITE: wait for ACK
    I = "I"  # server INVITE: wait for ACK retransmissions in Confirmed  # noqa: E741
    J = "J"  # server non-INVITE: wait for request retransmissions in Completed
    L = "L"  # server INVITE (RFC 6026): wait in Accepted
    M = "M"  # client INVITE (RFC 6026): wait in Accepted


@dataclass(frozen=True, slots=True)
class Timers:
    """T1 (RTT estimate), T2 (cap on non-INVITE and G retransmission intervals), T4
    (how long the network holds a message) and Timer D on unreliable transports, in
    seconds. Every other timer derives from these."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    d: float = 32.0

    def __post_init__(self) -> None:
        if not (self.t1 > 0 and self.t2 >= self.t1 and self.t4 >= 0 and self.d >= 0):
            raise ValueError(f"timers need t1 > 0, t2 >= t1, t4 >= 0, d >= 0: {self}")

    @property
    def timeout(self) -> float:
        """64*T1: Timers B, F, H, L, M, and J on unreliable transports."""
        return 64 * self.t1


DEFAULT_TIMERS = Timers()
