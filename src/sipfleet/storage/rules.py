"""How a REGISTER's contacts change an AOR's bindings; the reference for every backend.

SQLite runs ``plan_save`` in Python inside its write transaction. MariaDB and PostgreSQL
state the same rules in SQL so that a save is one round trip; the contract tests hold the
three to the same results.

The rules (RFC 3261 §10.3, RFC 5626 §6):
- A binding's key is its contact and its flow key (``model.flow_key``): '' for a plain
  binding, (instance, reg-id) for an RFC 5626 flow. Two flows of one instance may share
  a contact (one phone, one transport, two edge proxies), and a plain binding may share
  a contact with a flow: each is its own binding.
- An update *addresses* the AOR's unexpired binding of its key space: an update with an
  instance and a reg-id, the binding of that flow whatever its contact (RFC 5626 §6
  compares a flow by instance and reg-id, not by its Contact URI); an update without
  reg-id, the plain binding with the same contact. So an un-REGISTER of a contact without reg-id
  removes the plain binding only; a flow is removed by its own instance and reg-id (as
  RFC 5626 UAs unregister), or by ``Contact: *``.
- An update is *stale* when a binding it addresses has the same Call-ID and a CSeq at
  least as high: it changes nothing.
- Otherwise the addressed bindings are removed, except the one whose key is stored
  again (expires > now): that one is refreshed in place (keeping its id and ruid).
- A save may not grow an AOR past ``max_contacts`` (it may still shrink or refresh an AOR
  that is over a lowered limit); a refused save writes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sipfleet.storage import schema
from sipfleet.storage.errors import InvalidInput
from sipfleet.storage.model import AddressOfRecord, Binding, BindingUpdate

MAX_INT32 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class SavePlan:
    removed_ids: list[int]
    stored: list[BindingUpdate]
    before: int
    after: int
    refused: bool


def addresses(binding: Binding, update: BindingUpdate) -> bool:
    if update.reg_id is not None:
        return binding.instance == update.instance and binding.reg_id == update.reg_id
    return binding.reg_id is None and binding.contact == update.contact


def binding_key(binding: Binding | BindingUpdate) -> tuple[str, str]:
    """The unique key within the AOR (``location_binding_key``)."""
    return binding.contact, binding.flow_key


def is_stale(update: BindingUpdate, current: Sequence[Binding]) -> bool:
    return any(
        addresses(b, update) and b.callid == update.callid and b.cseq >= update.cseq
        for b in current
    )


def plan_save(
    current: Sequence[Binding], updates: Sequence[BindingUpdate], now: int, max_contacts: int
) -> SavePlan:
    """``current``: the AOR's unexpired bindings, read under the write lock."""
    live = [u for u in updates if not is_stale(u, current)]
    stored = [u for u in live if u.expires > now]
    stored_keys = {binding_key(u) for u in stored}
    removed = [
        b.id
        for b in current
        if binding_key(b) not in stored_keys and any(addresses(b, u) for u in live)
    ]
    kept = [b for b in current if b.id not in removed and binding_key(b) not in stored_keys]
    after = len(kept) + len(stored)
    refused = after > max_contacts and after > len(current)
    return SavePlan(removed, stored, len(current), after, refused)


def new_ruid() -> str:
    return uuid.uuid4().hex


def check_aor(aor: AddressOfRecord) -> None:
    check_text("username", aor.username, schema.USERNAME_LEN, required=True)
    check_text("domain", aor.domain, schema.DOMAIN_LEN, required=True)


def check_updates(aor: AddressOfRecord, updates: Sequence[BindingUpdate]) -> None:
    """Reject what the schema cannot hold, naming the field; before any SQL is sent."""
    check_aor(aor)
    contacts: set[str] = set()
    flows: set[tuple[str, int]] = set()
    for update in updates:
        _check_update(update)
        if update.contact in contacts:
            raise InvalidInput(f"contact: {update.contact!r} twice in one request")
        contacts.add(update.contact)
        if update.instance is not None and update.reg_id is not None:
            flow = (update.instance, update.reg_id)
            if flow in flows:
                raise InvalidInput(f"reg_id: instance {update.instance!r} reg-id twice")
            flows.add(flow)


def _check_update(update: BindingUpdate) -> None:
    check_text("contact", update.contact, schema.CONTACT_LEN, required=True)
    check_text("callid", update.callid, schema.CALLID_LEN, required=True)
    _integer("cseq", update.cseq, 0, MAX_INT32)
    _integer("expires", update.expires, 0, 2**62)
    _integer("flags", update.flags, -MAX_INT32, MAX_INT32)
    _integer("cflags", update.cflags, -MAX_INT32, MAX_INT32)
    if update.q is not None and not 0.0 <= update.q <= 1.0:
        raise InvalidInput(f"q: {update.q!r} is not between 0 and 1")
    if update.reg_id is not None:
        _integer("reg_id", update.reg_id, 1, MAX_INT32)
        if update.instance is None:
            raise InvalidInput("reg_id: given without an instance")
    check_text("path", update.path, schema.PATH_LEN)
    for name in ("received", "user_agent", "socket", "methods", "instance", "flow"):
        check_text(name, getattr(update, name), schema.SHORT_TEXT_LEN)


def check_text(name: str, value: str | None, limit: int, required: bool = False) -> None:
    if value is None:
        if required:
            raise InvalidInput(f"{name}: missing")
        return
    if not isinstance(value, str):
        raise InvalidInput(f"{name}: {value!r} is not text")
    if required and not value:
        raise InvalidInput(f"{name}: empty")
    if len(value) > limit:
        raise InvalidInput(f"{name}: longer than {limit} characters")
    if "\x00" in value:
        raise InvalidInput(f"{name}: contains a NUL character")


def _integer(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{name}: {value!r} is not an integer from {low} to {high}")


def encode_updates(updates: Sequence[BindingUpdate]) -> str:
    """The updates as one JSON array: the single parameter of the SQL save statements."""
    return json.dumps(
        [
            {
                "contact": u.contact,
                "expires": u.expires,
                "q": u.q,
                "callid": u.callid,
                "cseq": u.cseq,
                "received": u.received,
                "path": u.path,
                "flags": u.flags,
                "cflags": u.cflags,
                "user_agent": u.user_agent,
                "socket": u.socket,
                "methods": u.methods,
                "instance": u.instance,
                "reg_id": u.reg_id,
                "flow": u.flow,
                "flow_key": u.flow_key,
                "ruid": new_ruid(),
            }
            for u in updates
        ]
    )
