"""The storage interface and its SQLite, MariaDB/MySQL and PostgreSQL backends.

    storage = open_storage(config)            # or open_storage("sqlite:///var/lib/x.db")
    bindings = await storage.location.save(aor, updates, now=now, max_contacts=10)
    sub = await storage.subscribers.get("alice", "example.com")
    await storage.close()

See docs/storage.md.
"""

from sipfleet.storage.dsn import Dsn, Dsns, dsns_from_config, embedded_dsn
from sipfleet.storage.errors import (
    AlreadyExists,
    DsnError,
    InvalidInput,
    InvalidLcr,
    SchemaOutdated,
    StorageError,
    StorageOverloaded,
    StorageUnavailable,
    TooManyContacts,
)
from sipfleet.storage.factory import open_storage
from sipfleet.storage.interface import (
    AccountingStore,
    LbTargetStore,
    LcrStore,
    LocationStore,
    PreferenceStore,
    Storage,
    SubscriberStore,
)
from sipfleet.storage.model import (
    AccountingWrite,
    AddressOfRecord,
    Aor,
    Binding,
    BindingUpdate,
    CallRecord,
    DatabaseHealth,
    DomainRegistrations,
    EndedBy,
    GatewayEntry,
    LbTarget,
    LbTargetHealth,
    LcrSnapshot,
    LiveFlow,
    RouteBinding,
    RuleEntry,
    Subscriber,
)

__all__ = [
    "AccountingStore",
    "AccountingWrite",
    "AddressOfRecord",
    "AlreadyExists",
    "Aor",
    "Binding",
    "BindingUpdate",
    "CallRecord",
    "DatabaseHealth",
    "DomainRegistrations",
    "Dsn",
    "DsnError",
    "Dsns",
    "EndedBy",
    "GatewayEntry",
    "InvalidInput",
    "InvalidLcr",
    "LbTarget",
    "LbTargetHealth",
    "LbTargetStore",
    "LcrSnapshot",
    "LcrStore",
    "LiveFlow",
    "LocationStore",
    "PreferenceStore",
    "RouteBinding",
    "RuleEntry",
    "SchemaOutdated",
    "Storage",
    "StorageError",
    "StorageOverloaded",
    "StorageUnavailable",
    "Subscriber",
    "SubscriberStore",
    "TooManyContacts",
    "dsns_from_config",
    "embedded_dsn",
    "open_storage",
]
