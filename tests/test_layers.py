"""The layers of DESIGN §5, held by test: every import in src/sipfleet goes down, never up.

Every import statement counts: absolute and relative ones, those inside functions, and
those under ``if TYPE_CHECKING:`` (a type imported from an upper layer is a dependency on
it all the same: the lower layer cannot be read, checked or moved without the upper one).
Imports by name at run time (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sipfleet

PACKAGE = Path(sipfleet.__file__).resolve().parent
BELOW_ROLES = {
    "sip",
    "config",
    "stats",
    "transport",
    "dns",
    "storage",
    "media",
    "routing",
    "core",
    "logcontext",
}

# What each part of src/sipfleet may import of sipfleet, besides itself. A part is a
# folder or a module directly in src/sipfleet; "sipfleet" is the package's __init__.py.
ALLOWED: dict[str, set[str]] = {
    # sans-IO SIP: messages, parser, URIs, transactions. The vocabulary of all the others.
    "sip": set(),
    # pydantic models and TOML loading: read by every layer, reads none.
    "config": set(),
    # plain counting for the metrics (a fixed-bucket histogram): below all that counts.
    "stats": set(),
    # the only code that touches sockets: frames with sip's parser, limits from config.
    "transport": {"sip", "config", "stats", "logcontext"},
    # RFC 3263: NAPTR/SRV/A records to destinations (sans-IO) and dnspython's async resolver.
    "dns": {"sip", "transport"},
    # tables and their rows (lcr_rows checks gateway hosts with sip.uri); DSNs from config.
    "storage": {"sip", "config", "stats"},
    # the media relay's control (rtpengine's ng protocol): a client of a service, like storage.
    "media": {"sip", "config", "transport"},
    # the operator's policy: decides over messages, rows and peers; calls nothing above.
    "routing": {"sip", "config", "stats", "transport", "storage"},
    # async glue: endpoint, stateless forwarding, the proxy engine, the LB; asks routing.
    "core": BELOW_ROLES - {"core"},
    # thin compositions of everything below (a role may also serve the management API).
    "roles": BELOW_ROLES | {"mgmt"},
    # HTTP API, status page, metrics: reads the layers below the roles.
    "mgmt": set(BELOW_ROLES),
    # `sipfleet …`: the top; starts roles, reads and writes storage, reports the build
    # (native) and the version (the package's __init__.py).
    "cli": BELOW_ROLES | {"roles", "mgmt", "native", "sipfleet"},
    # which role, worker and Call-ID a log line is about: read by every layer, reads none.
    "logcontext": set(),
    # the guard of the compiled build (imports modules by name only).
    "native": set(),
    # the package's __init__.py runs the guard; __main__.py runs the CLI.
    "sipfleet": {"native"},
    "__main__": {"cli"},
}


def part_of(path: Path) -> str:
    """The part a source file belongs to (a key of ALLOWED)."""
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) > 1:
        return relative.parts[0]
    return "sipfleet" if relative.stem == "__init__" else relative.stem


def imported_modules(text: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in ``text``, the source of ``path``,
    wherever it stands (top level, function, ``if TYPE_CHECKING:``), in line order."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # what level 1 names
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            # `from sipfleet import native`, `from . import schema`: the names may be modules
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return sorted(found)


def target_part(module: str) -> str | None:
    """The part of sipfleet a module name falls in; None for modules outside sipfleet."""
    parts = module.split(".")
    if parts[0] != "sipfleet":
        return None
    if len(parts) > 1 and ((PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file()):
        return parts[1]
    return "sipfleet"  # the package's __init__.py, or a name it defines (__version__)


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(path)
        text = path.read_text()
        lines = text.splitlines()
        for line, module in imported_modules(text, path):
            target = target_part(module)
            allowed = ALLOWED.get(source, set())  # a part without a rule: see the test below
            if target is None or target == source or target in allowed:
                continue
            where = path.relative_to(PACKAGE.parent.parent)
            message = (
                f"{where}:{line}: {lines[line - 1].strip()!r}: {source}/ may not import "
                f"{target}/ (allowed: {', '.join(sorted(allowed)) or 'nothing'})"
            )
            if message not in found:  # once for `from x import a, b`
                found.append(message)
    return found


def test_every_part_has_a_rule() -> None:
    """A new folder or module in src/sipfleet needs its row in ALLOWED: where it stands."""
    parts = {part_of(path) for path in PACKAGE.rglob("*.py")}
    assert parts <= ALLOWED.keys(), f"parts without a rule in ALLOWED: {parts - ALLOWED.keys()}"


def test_imports_only_go_down() -> None:
    found = violations()
    assert not found, "imports against the layers of DESIGN §5:\n" + "\n".join(found)


def test_every_kind_of_import_is_read() -> None:
    """Relative, function-level and TYPE_CHECKING imports are all seen, and placed."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "from ..routing import lcr\n"
        "from . import schema\n"
        "if TYPE_CHECKING:\n"
        "    from sipfleet.core.clock import Clock\n"
        "def f() -> None:\n"
        "    import sipfleet.roles.lb\n"
    )
    seen = imported_modules(text, PACKAGE / "storage" / "example.py")
    assert seen == [
        (1, "typing.TYPE_CHECKING"),
        (2, "sipfleet.routing.lcr"),
        (3, "sipfleet.storage.schema"),
        (5, "sipfleet.core.clock.Clock"),
        (7, "sipfleet.roles.lb"),
    ]
    targets = [target_part(module) for _, module in seen]
    assert targets == [None, "routing", "storage", "core", "roles"]
