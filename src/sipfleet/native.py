"""The compiled build of the modules every packet runs through, and its guard.

``scripts/compile.py`` compiles the modules in ``COMPILED`` with mypyc into extension
modules beside their sources, and writes ``MANIFEST``: the SHA-256 of each source it
compiled. Python imports an extension module in preference to its ``.py``, so a source
changed after the build would silently not run. ``guard()`` (called when the package is
first imported) checks the manifest against the sources; when any differs, or when
``SIPFLEET_PURE`` is set, every compiled module is imported from its source instead. All
of them or none: compiled modules call each other directly, not through the import system.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The relay path: receive, parse, read the routing headers, edit, serialise, forward, send.
COMPILED = (
    "sipfleet.sip.errors",
    "sipfleet.sip.memo",
    "sipfleet.sip.grammar",
    "sipfleet.sip.headers",
    "sipfleet.sip.uri",
    "sipfleet.sip.address",
    "sipfleet.sip.via",
    "sipfleet.sip.message",
    "sipfleet.sip.headlines",
    "sipfleet.sip.parser",
    "sipfleet.sip.builders",
    "sipfleet.core.stateless",
    "sipfleet.transport.base",
    "sipfleet.transport.sockets",
    "sipfleet.transport.udp",
    "sipfleet.core.endpoint",
    # the LB's own path: its endpoint, the decision for each request, the handler
    "sipfleet.core.lb.router",
    "sipfleet.core.lb.guard",
    "sipfleet.core.lb.edge",
    "sipfleet.core.lb.fastpath",
    "sipfleet.core.lb.endpoint",
    "sipfleet.core.lb.balancer",
    "sipfleet.core.lb.sides",
    "sipfleet.core.lb.pools",
    "sipfleet.routing.selection",
    "sipfleet.routing.nat",
    "sipfleet.sip.flow",
    "sipfleet.sip.digest",  # the lockout key of every REGISTER with credentials
    "sipfleet.core.lb.keepalive",  # what every REGISTER 2xx teaches the LB (learned)
    # the proxy's sans-IO core: its transactions (RFC 3261 §17) and what it does with them
    "sipfleet.sip.dialog_token",
    "sipfleet.sip.transaction.timers",
    "sipfleet.sip.transaction.matching",
    "sipfleet.sip.transaction.base",
    "sipfleet.sip.transaction.server",
    "sipfleet.sip.transaction.client",
    "sipfleet.sip.transaction.layer",
    "sipfleet.core.proxy.actions",
    "sipfleet.core.proxy.hooks",  # called for every message sent on (before privacy_hooks)
    "sipfleet.core.proxy.privacy_hooks",  # runs on every call even with clir off
    "sipfleet.core.proxy.addresses",  # OwnAddresses.names/sent: each request's Vias and Routes
    "sipfleet.core.proxy.resolve",  # literal_destination: each branch's next hop
    "sipfleet.core.proxy.branch",
    "sipfleet.core.proxy.checks",
    "sipfleet.core.proxy.forward",
    "sipfleet.core.proxy.routes",
    "sipfleet.core.proxy.targets",
    "sipfleet.core.proxy.context",
    "sipfleet.core.proxy.core",
    "sipfleet.core.proxy.plans",
    "sipfleet.core.proxy.accounting",
    "sipfleet.core.proxy.fastack",
    "sipfleet.core.proxy.engine",
    # the registrar's path: each REGISTER's key, nonce, digest check, plan and answer, and
    # the overload controls both it and the LB consult for every request
    "sipfleet.core.overload",
    "sipfleet.core.answered",
    "sipfleet.sip.auth",
    "sipfleet.core.authenticate",
    "sipfleet.sip.registration",
    "sipfleet.core.registrar",
)
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "native-build.json"
PURE_VARIABLE = "SIPFLEET_PURE"

# What guard() decided, for `sipfleet up` and the logs: "compiled", or why not.
status = "not checked"


def source_of(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def extension_of(module: str) -> Path:
    return source_of(module).with_suffix(importlib.machinery.EXTENSION_SUFFIXES[0])


def source_hashes(modules: Sequence[str] = COMPILED) -> dict[str, str]:
    return {name: hashlib.sha256(source_of(name).read_bytes()).hexdigest() for name in modules}


def read_manifest() -> dict[str, str] | None:
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def why_not_compiled(manifest: dict[str, str] | None) -> str | None:
    """None when the compiled build is to be used; else the reason it isn't."""
    if os.environ.get(PURE_VARIABLE):
        return f"{PURE_VARIABLE} is set"
    return build_mismatch(manifest)


def build_mismatch(manifest: dict[str, str] | None) -> str | None:
    """None when the build that ``manifest`` describes matches the sources; else how not."""
    if manifest is None:
        return "not compiled (scripts/compile.py)"
    if sorted(manifest) != sorted(COMPILED):
        return "compiled for another module list: run scripts/compile.py"
    missing = [name for name in COMPILED if not extension_of(name).exists()]
    if missing:
        return f"{', '.join(missing)} missing: run scripts/compile.py"
    changed = [name for name, digest in source_hashes().items() if manifest[name] != digest]
    if changed:
        return f"{', '.join(changed)} changed since it was compiled: run scripts/compile.py"
    return None


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the listed modules' ``.py`` files, ahead of the extension modules beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_of(fullname))


def guard() -> None:
    global status
    manifest = read_manifest()
    reason = why_not_compiled(manifest)
    if reason is None:
        status = "compiled"
        return
    status = f"pure Python ({reason})"
    if manifest is not None and not os.environ.get(PURE_VARIABLE):
        print(f"sipfleet: running from source: {reason}", file=sys.stderr)
    sys.meta_path.insert(0, _SourceFinder(COMPILED))


def loaded_compiled() -> list[str]:
    """The listed modules imported so far from an extension module."""
    return [
        name
        for name in COMPILED
        if (module := sys.modules.get(name)) is not None
        and not str(getattr(module, "__file__", "")).endswith(".py")
    ]
