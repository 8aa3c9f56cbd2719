"""Contract: registrations per domain (the metrics' one GROUP BY) and Storage.health() of a
node without replicas, on every backend."""

from __future__ import annotations

from sipfleet.storage import Aor, BindingUpdate, DomainRegistrations, Storage
from sipfleet.storage.timing import STATEMENTS

NOW = 1_700_000_000


async def register(storage: Storage, user: str, domain: str, *contacts: str, ttl: int = 60) -> None:
    updates = [BindingUpdate(contact, NOW + ttl, f"{user}-call", 1) for contact in contacts]
    await storage.location.save(Aor(user, domain), updates, now=NOW, max_contacts=10)


async def test_registrations_by_domain_counts_unexpired_aors_and_bindings(
    storage: Storage,
) -> None:
    assert await storage.location.registrations_by_domain(now=NOW) == []
    await register(storage, "alice", "example.com", "sip:a@192.0.2.1", "sip:a@192.0.2.2")
    await register(storage, "bob", "example.com", "sip:b@192.0.2.3")
    await register(storage, "carol", "example.org", "sip:c@192.0.2.4")
    await register(storage, "dave", "example.org", "sip:d@192.0.2.5", ttl=10)  # expires first
    before = STATEMENTS.latency.by_label["location.by_domain"].count
    found = await storage.location.registrations_by_domain(now=NOW + 30)
    assert found == [
        DomainRegistrations("example.com", 2, 3),
        DomainRegistrations("example.org", 1, 1),
    ]
    assert STATEMENTS.latency.by_label["location.by_domain"].count == before + 1
    assert await storage.location.registrations_by_domain(now=NOW + 100) == []


async def test_health_of_a_node_without_replicas_is_its_primary(storage: Storage) -> None:
    [primary] = await storage.health()
    assert (primary.role, primary.up, primary.lag_s, primary.error) == ("primary", True, None, None)
    assert primary.name == str(storage.dsns.write)
