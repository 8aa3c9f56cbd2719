"""README.md's "Trying it", done as written, against `sipfleet up` as the README starts it.

The ```sh block after "## Trying it" is run line by line (``.venv/bin/`` is the virtualenv
running the tests); then two phones (sipp) point at 127.0.0.1:5060 as the users those
lines made, `sipfleet location show` lists them, and they call each other. The banner's
"Add a user:" line is run as printed too.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.interop.lab import (
    Embedded,
    embedded_cluster,
    find_message,
    product_env,
    start_phone,
)

pytestmark = [pytest.mark.interop, pytest.mark.netns]

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = ".venv/bin/"


def trying_it_commands() -> list[list[str]]:
    """The commands of the first ```sh block in the "## Trying it" section."""
    text = README.read_text()
    section = text.split("\n## Trying it\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"^```sh\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, "README's Trying it has no ```sh block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def sipfleet_args(argv: list[str]) -> list[str]:
    """The arguments of a `sipfleet` command line as a user types it (either the
    virtualenv's script, as the README writes it, or `sipfleet` on PATH)."""
    assert argv[0] in (f"{VENV_BIN}sipfleet", "sipfleet"), argv
    return argv[1:]


def register(lab: Embedded, workdir: Path, aor: str, port: int, password: str = "secret") -> None:
    user, domain = aor.split("@")
    phone = start_phone(
        lab.ns, "phone_register", workdir, port=port, target=f"{lab.lb_host}:{lab.lb_port}",
        keys={"user": user, "domain": domain, "contact_port": str(port + 1),
        "expires": "600"}, credentials=(user, password), timeout=10,
    )  # fmt: skip
    result = phone.wait(20)
    assert result.ok, f"{aor}: {result.explain()}\n{lab.log_text()[-3000:]}"


def test_the_readme_has_the_commands_it_promises() -> None:
    commands = trying_it_commands()
    assert [sipfleet_args(argv)[:3] for argv in commands] == [
        ["subscriber", "add", "alice@example.com"],
        ["subscriber", "add", "bob@example.com"],
    ]


def test_trying_it_as_written(embedded: Embedded, tmp_path: Path) -> None:
    assert (embedded.lb_host, embedded.lb_port) == ("127.0.0.1", 5060)  # as the README says
    for argv in trying_it_commands():
        done = embedded.sipfleet(*sipfleet_args(argv))
        assert done.returncode == 0, f"{shlex.join(argv)}: {done.stdout}{done.stderr}"

    register(embedded, tmp_path, "alice@example.com", 7000)
    register(embedded, tmp_path, "bob@example.com", 7002)
    shown = embedded.sipfleet("location", "show")
    assert shown.returncode == 0, shown.stderr
    for aor, contact in (("alice@example.com", 7001), ("bob@example.com", 7003)):
        assert aor in shown.stdout, shown.stdout
        assert f"127.0.0.1:{contact}" in shown.stdout, shown.stdout

    # alice calls bob, then bob calls alice; each time the callee hangs up
    for caller, caller_port, callee, callee_port in (
        ("alice", 7001, "bob", 7003),
        ("bob", 7003, "alice", 7001),
    ):
        answering = start_phone(
            embedded.ns, "phone_callee_hangup", tmp_path, port=callee_port,
            keys={"user": callee}, timeout=15,
        )  # fmt: skip
        calling = start_phone(
            embedded.ns, "phone_caller_wait_bye", tmp_path, port=caller_port,
            target=f"{embedded.lb_host}:{embedded.lb_port}",
            keys={"user": caller, "peer": callee, "domain": "example.com"},
            credentials=(caller, "secret"), timeout=15,
        )  # fmt: skip
        made, taken = calling.wait(25), answering.wait(25)
        log = embedded.log_text()[-3000:]
        assert made.ok, f"{caller} -> {callee}: {made.explain()}\n{taken.explain()}\n{log}"
        assert taken.ok, f"{caller} -> {callee}: {taken.explain()}\n{log}"
        assert find_message(taken.messages, "received", "INVITE ")


def test_the_banners_add_a_user_line_works_as_printed(tmp_path: Path) -> None:
    """In a cluster of its own: the README's users are not there (the banner names alice)."""
    with embedded_cluster(tmp_path, "banner") as embedded:
        printed = re.search(r"^Add a user:\s+(.+)$", embedded.log_text(), flags=re.MULTILINE)
        assert printed is not None, embedded.log_text()
        argv = shlex.split(printed.group(1))
        done = subprocess.run(  # exactly as printed, in the README's second shell
            embedded.wrap(argv), capture_output=True, text=True, timeout=60, check=False,
            env=product_env(), cwd=embedded.workdir,
        )  # fmt: skip
        assert done.returncode == 0, f"{printed.group(1)}: {done.stdout}{done.stderr}"
        aor = next(word for word in argv if "@" in word)
        listed = embedded.sipfleet("subscriber", "list")
        assert aor in listed.stdout.split(), listed.stdout
        password = argv[argv.index("--password") + 1]
        register(embedded, tmp_path, aor, 7010, password)  # a phone can register as that user
