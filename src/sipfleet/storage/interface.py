"""The storage interface: what registrar, proxy, LB and CLI may ask of the database.

Every method may raise ``StorageUnavailable`` (database unreachable or too slow; nothing
half-written) or ``StorageOverloaded`` (more than ``database.max_in_flight`` queries in
flight). ``now`` is unix seconds; left out, the local clock is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sipfleet.storage.dsn import Dsns
from sipfleet.storage.model import (
    AddressOfRecord,
    Binding,
    BindingUpdate,
    LbPool,
    LbState,
    LbTarget,
    LiveFlow,
    Subscriber,
)


class LocationStore(Protocol):
    async def save(
        self,
        aor: AddressOfRecord,
        updates: Sequence[BindingUpdate],
        *,
        now: int,
        max_contacts: int,
    ) -> list[Binding]:
        """Apply one REGISTER's contacts (see ``storage.rules``) and return every unexpired
        binding of the AOR afterwards. One database round trip where the backend allows.

        Raises ``TooManyContacts`` (nothing written) and ``InvalidInput`` (field named).
        """
        ...

    async def lookup(self, aor: AddressOfRecord, *, now: int | None = None) -> list[Binding]:
        """Unexpired bindings, best q first; from a replica, retried on the primary when the
        replica has none and ``database.retry_primary_on_miss`` is set."""
        ...

    async def count(self, aor: AddressOfRecord, *, now: int | None = None) -> int: ...

    async def remove(self, aor: AddressOfRecord, contact: str) -> int:
        """Remove one binding by contact URI; returns how many were removed (0 or 1)."""
        ...

    async def remove_all(
        self, aor: AddressOfRecord, *, callid: str | None = None, cseq: int = 0
    ) -> int:
        """``Contact: *``: with ``callid``, bindings of that Call-ID and a CSeq >= ``cseq``
        survive (RFC 3261 §10.3 step 6); without, every binding goes (operator removal)."""
        ...

    async def purge_expired(self, *, now: int | None = None) -> int:
        """Delete expired bindings: one statement, safe on several registrars at once."""
        ...

    async def live_flows(self, *, now: int | None = None) -> list[LiveFlow]:
        """Every flow token with an unexpired binding: the LB's keepalive table at start."""
        ...

    async def all_bindings(self, *, now: int | None = None) -> list[Binding]:
        """Every unexpired binding (the CLI's ``location show``)."""
        ...


class SubscriberStore(Protocol):
    async def get(self, username: str, domain: str) -> Subscriber | None: ...

    async def add(self, subscriber: Subscriber) -> None:
        """Raises ``AlreadyExists`` when the account is there already."""
        ...

    async def set_ha1(self, username: str, domain: str, ha1: str, ha1_sha256: str) -> bool:
        """New credentials; False when there is no such subscriber."""
        ...

    async def remove(self, username: str, domain: str) -> bool: ...

    async def list_all(self, domain: str | None = None) -> list[Subscriber]: ...


class PreferenceStore(Protocol):
    async def get(self, username: str, domain: str) -> dict[str, str]:
        """Every attribute of the user (e.g. ``lcr_cap``, ``clir``)."""
        ...

    async def set(self, username: str, domain: str, attribute: str, value: str) -> None: ...

    async def remove(self, username: str, domain: str, attribute: str) -> bool: ...


class LbTargetStore(Protocol):
    async def list_all(self, pool: LbPool | None = None) -> list[LbTarget]: ...

    async def add(
        self, pool: LbPool, uri: str, *, weight: int = 1, state: LbState = "active"
    ) -> LbTarget:
        """Raises ``AlreadyExists`` for a (pool, uri) that is there already."""
        ...

    async def remove(self, pool: LbPool, uri: str) -> bool: ...

    async def set_state(self, pool: LbPool, uri: str, state: LbState) -> bool: ...


class Storage(Protocol):
    """One node's view of the cluster database; share one per process."""

    @property
    def dsns(self) -> Dsns: ...
    @property
    def location(self) -> LocationStore: ...
    @property
    def subscribers(self) -> SubscriberStore: ...
    @property
    def preferences(self) -> PreferenceStore: ...
    @property
    def lb_targets(self) -> LbTargetStore: ...
    @property
    def in_flight(self) -> int:
        """Queries running or waiting for a connection now."""
        ...

    async def check_schema(self) -> None:
        """Raises ``SchemaOutdated`` unless the write database is at the current revision."""
        ...

    async def close(self) -> None: ...
