"""What storage raises. Callers catch these, never a driver's own exceptions."""

from __future__ import annotations

from collections.abc import Sequence


class StorageError(Exception):
    """Base of every storage error."""


class StorageUnavailable(StorageError):
    """The database cannot be reached or did not answer in time.

    Nothing was written (or the transaction was rolled back); the registrar and the proxy
    answer 503 with Retry-After. The next call tries to reconnect, so no restart is needed
    when it returns.
    """


class StorageOverloaded(StorageUnavailable):
    """More queries are in flight than ``database.max_in_flight``: shed the request (503)."""


class InvalidInput(StorageError, ValueError):
    """A value does not fit the schema; the message starts with the field's name."""


class InvalidLcr(InvalidInput):
    """LCR rows that fail their checks (``lcr_rows.check_rows`` and the column sizes);
    nothing was written. ``problems`` names each entry and field, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


class TooManyContacts(StorageError):
    """The REGISTER would grow the AOR past its max contacts; nothing was written."""

    def __init__(self, aor: str, count: int, limit: int) -> None:
        super().__init__(f"{aor}: {count} bindings would exceed max_contacts={limit}")
        self.aor = aor
        self.count = count
        self.limit = limit


class AlreadyExists(StorageError):
    """An insert met a row with the same unique key."""


class TransactionConflict(StorageError):
    """A deadlock or serialisation failure; the backend retries the whole transaction."""


class SchemaOutdated(StorageError):
    """The database schema is missing or older than this sipfleet: run `sipfleet db upgrade`."""


class DsnError(StorageError, ValueError):
    """A database URL that cannot be used; the message names the setting it came from."""
