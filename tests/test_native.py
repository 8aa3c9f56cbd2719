"""The compiled build is used when, and only when, it matches the sources."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sipfleet import native

EXPECT_COMPILED = bool(os.environ.get("SIPFLEET_EXPECT_COMPILED"))
needs_build = pytest.mark.skipif(
    native.read_manifest() is None, reason="no compiled build (scripts/compile.py)"
)

PROBE = """
import sipfleet.native as native
from sipfleet.sip import parse_message
message = parse_message(
    b"OPTIONS sip:a@b SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\\r\\n"
    b"From: <sip:c@d>;tag=1\\r\\nTo: <sip:a@b>\\r\\nCall-ID: x\\r\\nCSeq: 1 OPTIONS\\r\\n"
    b"Max-Forwards: 70\\r\\nContent-Length: 0\\r\\n\\r\\n"
)
import sipfleet.sip.parser as parser
print(native.status)
print(parser.__file__)
print(message.top_via.branch)
"""


def run_probe(package_root: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    env.pop("SIPFLEET_PURE", None)
    env.update(environment)
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """This checkout's package with its build, in a place the test may edit."""
    shutil.copytree(native.PACKAGE_DIR, tmp_path / "sipfleet", symlinks=True)
    return tmp_path


@pytest.mark.skipif(not EXPECT_COMPILED, reason="SIPFLEET_EXPECT_COMPILED is not set")
def test_the_suite_runs_on_the_compiled_build() -> None:
    for name in native.COMPILED:
        importlib.import_module(name)
    assert native.status == "compiled"
    assert native.loaded_compiled() == list(native.COMPILED)


@needs_build
def test_a_build_that_matches_its_sources_is_used(package_copy: Path) -> None:
    probe = run_probe(package_copy)
    status, parser_file, branch = probe.stdout.split()
    assert (status, branch) == ("compiled", "z9hG4bK1")
    assert parser_file.endswith(".so")
    assert parser_file.startswith(str(package_copy))
    assert probe.stderr == ""


@needs_build
def test_a_source_changed_after_the_build_runs_from_source_and_says_so(
    package_copy: Path,
) -> None:
    grammar = package_copy / "sipfleet" / "sip" / "grammar.py"
    grammar.write_text(grammar.read_text() + "\n# edited after the build\n")
    probe = run_probe(package_copy)
    lines = probe.stdout.splitlines()
    assert lines[0].startswith("pure Python (sipfleet.sip.grammar changed")
    assert lines[1] == str(package_copy / "sipfleet" / "sip" / "parser.py")
    assert lines[2] == "z9hG4bK1"
    assert "sipfleet: running from source: sipfleet.sip.grammar changed" in probe.stderr


@needs_build
def test_sipfleet_pure_runs_from_source_without_a_warning(package_copy: Path) -> None:
    probe = run_probe(package_copy, SIPFLEET_PURE="1")
    lines = probe.stdout.splitlines()
    assert lines[:2] == [
        "pure Python (SIPFLEET_PURE is set)",
        str(package_copy / "sipfleet" / "sip" / "parser.py"),
    ]
    assert probe.stderr == ""


def test_what_keeps_the_build_from_being_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIPFLEET_PURE", raising=False)
    hashes = native.source_hashes()
    assert native.why_not_compiled(None) == "not compiled (scripts/compile.py)"
    other_list = {name: hashes[name] for name in native.COMPILED[:-1]}
    assert native.why_not_compiled(other_list) == (
        "compiled for another module list: run scripts/compile.py"
    )
    stale = {**hashes, "sipfleet.sip.via": "0" * 64}
    built = all(native.extension_of(name).exists() for name in native.COMPILED)
    if built:
        assert native.why_not_compiled(hashes) is None
        assert native.why_not_compiled(stale) == (
            "sipfleet.sip.via changed since it was compiled: run scripts/compile.py"
        )
    else:
        assert "missing: run scripts/compile.py" in str(native.why_not_compiled(hashes))
    monkeypatch.setenv("SIPFLEET_PURE", "1")
    assert native.why_not_compiled(hashes) == "SIPFLEET_PURE is set"
