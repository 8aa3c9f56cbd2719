"""The health of the LCR gateways as one proxy sees it (DESIGN §3): sans-IO, the clock
is passed in.

- Every attempt on a gateway ends as a failure or not. A failure is what makes the call
  move on to the next trunk and is the gateway's fault: 408 (its own, a timeout, or no
  answer within the trunk timeout), any 5xx but 501 (503 stands for a transport error
  too) — unless the gateway had rung (18x) first: then it reached the far end and works.
- ``defunct_after`` failures in a row make a gateway **defunct**: LCR leaves it out
  (``is_defunct``) and it is probed with OPTIONS every ``probe_interval``.
- It comes back at once when it answers a probe (any final response but 503, which
  says it is unavailable) or an attempt that was still under way ends well. When
  ``defunct_for`` runs out without an answer it comes back **on probation**: calls try
  it again, and its next failure makes it defunct again at once (a gateway that ignores
  OPTIONS is not shut out for good).

Only gateways with a failure to remember are kept, so the state is as small as the
trouble. Each proxy judges on its own from its own calls; nothing is shared.
"""

from __future__ import annotations

from dataclasses import dataclass


def is_failure(status: int, progressed: bool = False) -> bool:
    """Whether an attempt that ended with ``status`` counts against the gateway. 501 does
    not: a gateway that does not implement a method (MESSAGE, say) still carries calls."""
    return not progressed and (status == 408 or (500 <= status < 600 and status != 501))


def probe_answered_alive(status: int) -> bool:
    """A final answer to OPTIONS shows the gateway is there, unless it says 503."""
    return status >= 200 and status != 503


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A gateway left service (``defunct``) or came back; ``why`` is for the log."""

    gateway: str
    defunct: bool
    why: str


@dataclass(slots=True)
class _State:
    failures: int = 0
    defunct_until: float | None = None  # None: in service
    next_probe: float = 0.0


class GatewayHealth:
    def __init__(
        self, *, defunct_after: int = 3, defunct_for: float = 60.0, probe_interval: float = 5.0
    ) -> None:
        if defunct_after < 1:
            raise ValueError(f"defunct_after: {defunct_after} is less than 1")
        if defunct_for <= 0 or probe_interval <= 0:
            raise ValueError("defunct_for and probe_interval must be positive")
        self.defunct_after = defunct_after
        self.defunct_for = defunct_for
        self.probe_interval = probe_interval
        self._states: dict[str, _State] = {}

    # -- questions ------------------------------------------------------------------------
    def is_defunct(self, gateway: str, now: float) -> bool:
        state = self._states.get(gateway)
        return state is not None and state.defunct_until is not None and state.defunct_until > now

    def defunct(self, now: float) -> list[str]:
        """The gateways out of service now."""
        return [name for name in self._states if self.is_defunct(name, now)]

    def failures(self, gateway: str) -> int:
        """Consecutive failures counted for ``gateway`` (0 when all is well)."""
        state = self._states.get(gateway)
        return 0 if state is None else state.failures

    # -- events ---------------------------------------------------------------------------
    def attempt_ended(
        self, gateway: str, status: int, progressed: bool, now: float
    ) -> HealthChange | None:
        """A call's attempt on ``gateway`` ended with ``status``."""
        if not is_failure(status, progressed):
            return self._alive(gateway, f"answered a call ({status})")
        state = self._states.setdefault(gateway, _State())
        state.failures += 1
        if state.defunct_until is not None and state.defunct_until > now:
            return None  # already out; calls that were under way still fail
        if state.failures < self.defunct_after:
            return None
        state.defunct_until = now + self.defunct_for
        state.next_probe = now + self.probe_interval
        return HealthChange(gateway, True, f"{state.failures} failures in a row, last {status}")

    def probe_answered(self, gateway: str, status: int) -> HealthChange | None:
        """``gateway`` answered our OPTIONS with ``status``."""
        if not probe_answered_alive(status):
            return None
        return self._alive(gateway, f"answered OPTIONS ({status})")

    def probes_due(self, now: float) -> list[str]:
        """The defunct gateways to probe now; each is due again ``probe_interval`` later."""
        due: list[str] = []
        for name, state in self._states.items():
            if state.defunct_until is None or state.defunct_until <= now:
                continue
            if state.next_probe <= now:
                state.next_probe = now + self.probe_interval
                due.append(name)
        return due

    def expire(self, now: float) -> list[HealthChange]:
        """Gateways whose defunct time ran out without an answer: back on probation,
        one failure short of defunct."""
        changes: list[HealthChange] = []
        for name, state in self._states.items():
            if state.defunct_until is not None and state.defunct_until <= now:
                state.defunct_until = None
                state.failures = self.defunct_after - 1
                changes.append(HealthChange(name, False, "defunct time over, on probation"))
        return changes

    def forget(self, gateway: str) -> None:
        """``gateway`` is no longer in the LCR data."""
        self._states.pop(gateway, None)

    def _alive(self, gateway: str, why: str) -> HealthChange | None:
        state = self._states.pop(gateway, None)
        if state is None or state.defunct_until is None:
            return None
        return HealthChange(gateway, False, why)
