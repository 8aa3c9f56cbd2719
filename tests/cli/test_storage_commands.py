"""`sipfleet db`, `subscriber` and `location`, run as an operator would (main([...]))."""

from __future__ import annotations

import asyncio
import hashlib
import io
import sqlite3
import time
from pathlib import Path

import pytest

from sipfleet.storage import Aor, BindingUpdate, open_storage
from sipfleet.storage.migrate import head_revision
from tests.cli.conftest import sipfleet
from tests.conftest import new_database
from tests.dbservers import DbServer

pytestmark = pytest.mark.usefixtures("clean_environment")


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # RFC 2617's HA1


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_db_upgrade_creates_then_is_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path / 'new' / 'x.db'}"
    status, out, _ = sipfleet(capsys, "db", "current", "--db", url)
    assert status == 1
    assert "run `sipfleet db upgrade`" in out
    assert sipfleet(capsys, "db", "upgrade", "--db", url)[:2] == (
        0,
        f"database {url}: upgraded from (empty) to {head_revision()}\n",
    )
    assert sipfleet(capsys, "db", "upgrade", "--db", url)[:2] == (
        0,
        f"database {url}: already at {head_revision()}\n",
    )
    assert sipfleet(capsys, "db", "current", "--db", url)[0] == 0


def test_default_database_is_the_one_of_sipfleet_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    assert sipfleet(capsys, "db", "upgrade", "-c", str(config))[0] == 0
    assert (tmp_path / "data" / "sipfleet.db").exists()
    assert (
        sipfleet(capsys, "subscriber", "add", "a@b.c", "--password", "x", "-c", str(config))[0] == 0
    )
    # The config's database.write wins over the data directory; --db over both.
    other = tmp_path / "other.db"
    config.write_text(config.read_text() + f'[database]\nwrite = "sqlite://{other}"\n')
    assert sipfleet(capsys, "db", "upgrade", "-c", str(config))[0] == 0
    assert sipfleet(capsys, "subscriber", "list", "-c", str(config))[1] == ""
    default = f"sqlite://{tmp_path / 'data' / 'sipfleet.db'}"
    assert (
        sipfleet(capsys, "subscriber", "list", "-c", str(config), "--db", default)[1] == "a@b.c\n"
    )


def test_subscriber_add_stores_ha1_values_only(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = sipfleet(
        capsys, "subscriber", "add", "alice@Example.COM", "--password", "s3cret!", "--db", db
    )
    assert (status, out) == (0, "subscriber alice@example.com added\n")
    with sqlite3.connect(db.removeprefix("sqlite://")) as conn:
        rows = conn.execute("SELECT * FROM subscriber").fetchall()
    assert len(rows) == 1
    assert rows[0][1:] == (
        "alice",
        "example.com",
        md5("alice:example.com:s3cret!"),
        sha256("alice:example.com:s3cret!"),
    )
    assert not any("s3cret" in str(value) for value in rows[0])


def test_subscriber_realm_comes_from_the_registrar_config(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[registrar]\nrealm = "sip.example.net"\n')
    args = [
        "subscriber",
        "add",
        "bob@example.com",
        "--password",
        "pw",
        "-c",
        str(config),
        "--db",
        db,
    ]
    assert sipfleet(capsys, *args)[0] == 0
    with sqlite3.connect(db.removeprefix("sqlite://")) as conn:
        (ha1,) = conn.execute("SELECT ha1 FROM subscriber").fetchone()
    assert ha1 == md5("bob:sip.example.net:pw")


def test_subscriber_lifecycle(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for aor in ("carol@b.org", "alice@a.org", "bob@a.org"):
        assert sipfleet(capsys, "subscriber", "add", aor, "--password", "pw", "--db", db)[0] == 0
    assert (
        sipfleet(capsys, "subscriber", "list", "--db", db)[1]
        == "alice@a.org\nbob@a.org\ncarol@b.org\n"
    )
    assert (
        sipfleet(capsys, "subscriber", "list", "A.org", "--db", db)[1] == "alice@a.org\nbob@a.org\n"
    )

    monkeypatch.setattr("sys.stdin", io.StringIO("n3w\n"))  # the password from a pipe
    assert sipfleet(capsys, "subscriber", "passwd", "bob@a.org", "--db", db)[:2] == (
        0,
        "subscriber bob@a.org: password changed\n",
    )
    with sqlite3.connect(db.removeprefix("sqlite://")) as conn:
        (ha1,) = conn.execute("SELECT ha1 FROM subscriber WHERE username = 'bob'").fetchone()
    assert ha1 == md5("bob:a.org:n3w")

    assert sipfleet(capsys, "subscriber", "remove", "bob@a.org", "--db", db)[:2] == (
        0,
        "subscriber bob@a.org removed\n",
    )
    assert sipfleet(capsys, "subscriber", "list", "a.org", "--db", db)[1] == "alice@a.org\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["subscriber", "add", "bob", "--password", "x"], "subscriber: 'bob' is not USER@DOMAIN"),
        (["subscriber", "add", "a@a.org", "--password", ""], "password: empty"),
        (["subscriber", "add", "a@a.org", "--password", "x"], "subscriber: a@a.org exists already"),
        (
            ["subscriber", "passwd", "zed@a.org", "--password", "x"],
            "subscriber: no subscriber zed@a.org",
        ),
        (["subscriber", "remove", "zed@a.org"], "subscriber: no subscriber zed@a.org"),
        (["subscriber", "add", f"{'u' * 65}@a.org", "--password", "x"], "username: longer than 64"),
        (["location", "show", "@a.org"], "aor: '@a.org' is not USER@DOMAIN"),
        (["location", "remove", "a@a.org"], "aor: a@a.org has no bindings"),
        (["location", "remove", "a@a.org", "sip:x"], "contact: sip:x is not bound to a@a.org"),
    ],
)
def test_errors_name_the_field(
    db: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert sipfleet(capsys, "subscriber", "add", "a@a.org", "--password", "x", "--db", db)[0] == 0
    status, _, err = sipfleet(capsys, *args, "--db", db)
    assert status == 1
    assert err.startswith(f"sipfleet: {message}")
    assert "Traceback" not in err


def test_database_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "postgres-ish://x": "--db: 'postgres-ish://x' is not a database URL",
        f"sqlite://{tmp_path / 'missing.db'}": "run `sipfleet db upgrade`",
        "mysql://root:hunter2@127.0.0.1:1/x": "database mysql://root@127.0.0.1:1/x unreachable",
    }
    for url, message in cases.items():
        status, _, err = sipfleet(capsys, "subscriber", "list", "--db", url)
        assert status == 1
        assert message in err
        assert len(err.strip().splitlines()) == 1
        assert "hunter2" not in err


def seed_bindings(url: str) -> None:
    async def seed() -> None:
        storage = open_storage(url)
        now = int(time.time())
        expires = now + 3600
        alice, bob = Aor("alice", "example.com"), Aor("bob", "example.com")
        await storage.location.save(
            alice,
            [
                BindingUpdate("sip:alice@10.0.0.1", expires, "c1", 1, q=0.5, user_agent="Desk"),
                BindingUpdate("sip:alice@10.0.0.2", expires, "c2", 1, path="<sip:lb;lr>"),
            ],
            now=now,
            max_contacts=10,
        )
        await storage.location.save(
            bob, [BindingUpdate("sip:bob@10.0.0.3", expires, "c3", 1)], now=now, max_contacts=10
        )
        await storage.close()

    asyncio.run(seed())


def test_location_show_and_remove(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    seed_bindings(db)
    status, out, _ = sipfleet(capsys, "location", "show", "alice@example.com", "--db", db)
    lines = out.splitlines()
    assert status == 0
    assert lines[0] == "alice@example.com"
    assert lines[1].startswith("  sip:alice@10.0.0.2  expires=")
    assert "path=<sip:lb;lr>" in lines[1]
    assert lines[2].startswith("  sip:alice@10.0.0.1  expires=")
    assert "q=0.5" in lines[2]
    assert "user-agent=Desk" in lines[2]
    status, out, _ = sipfleet(capsys, "location", "show", "--db", db)
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        "alice@example.com",
        "bob@example.com",
    ]
    assert sipfleet(
        capsys, "location", "remove", "alice@example.com", "sip:alice@10.0.0.1", "--db", db
    )[:2] == (0, "alice@example.com: removed 1 binding\n")
    assert sipfleet(capsys, "location", "remove", "bob@example.com", "--db", db)[:2] == (
        0,
        "bob@example.com: removed 1 binding\n",
    )
    assert sipfleet(capsys, "location", "show", "bob@example.com", "--db", db)[:2] == (
        1,
        "bob@example.com: not registered\n",
    )
    status, out, _ = sipfleet(capsys, "location", "show", "--db", db)
    assert out.count("  sip:") == 1


@pytest.mark.mysql
def test_against_mariadb(mariadb_server: DbServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = new_database(mariadb_server, "cli")
    assert sipfleet(capsys, "subscriber", "list", "--db", url)[0] == 1  # not migrated yet
    assert sipfleet(capsys, "db", "upgrade", "--db", url)[0] == 0
    assert (
        sipfleet(capsys, "subscriber", "add", "alice@example.com", "--password", "pw", "--db", url)[
            0
        ]
        == 0
    )
    assert sipfleet(capsys, "subscriber", "list", "--db", url)[1] == "alice@example.com\n"
    seed_bindings(url)
    status, out, _ = sipfleet(capsys, "location", "show", "alice@example.com", "--db", url)
    assert (status, out.count("sip:alice@")) == (0, 2)
    assert sipfleet(capsys, "location", "remove", "alice@example.com", "--db", url)[1] == (
        "alice@example.com: removed 2 bindings\n"
    )
