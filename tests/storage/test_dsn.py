"""Database URLs and which databases a node uses (no database needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipfleet.config import config_from_dict
from sipfleet.storage import Aor, Dsn, DsnError, InvalidInput, dsns_from_config, open_storage


def test_url_forms() -> None:
    assert Dsn.parse("sqlite:///var/lib/x.db").path == Path("/var/lib/x.db")
    assert Dsn.parse("sqlite:////var/lib/x.db").path == Path("/var/lib/x.db")
    assert Dsn.parse("sqlite:rel.db").path == Path("rel.db").resolve()
    my = Dsn.parse("mariadb://sip%40fleet:p%3Aw@db1:3307/kam")
    assert (my.kind, my.user, my.password, my.host, my.port, my.database) == (
        "mysql",
        "sip@fleet",
        "p:w",
        "db1",
        3307,
        "kam",
    )
    pg = Dsn.parse("postgres://u@h/sip?host=/run/postgresql")
    assert (pg.kind, pg.port, pg.socket) == ("postgresql", 5432, "/run/postgresql")
    assert Dsn.parse("mysql://u@h/db?unix_socket=/run/mysqld.sock").socket == "/run/mysqld.sock"


def test_passwords_stay_out_of_text() -> None:
    dsn = Dsn.parse("postgresql://alice:hunter2@db:5432/sip")
    assert str(dsn) == "postgresql://alice@db:5432/sip"
    assert "hunter2" not in repr(dsn)
    with pytest.raises(DsnError) as error:
        Dsn.parse("oracle://alice:hunter2@db/sip", "database.write")
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nonsense", "database.read[0]: 'nonsense' is not a database URL"),
        ("mysql://u@h:99999/db", "database.read[0]: bad port"),
        ("mysql://u@h/", "database.read[0]: 'mysql://u@h/' names no database"),
        ("postgresql://u@h/db?sslmode=require", "database.read[0]: unknown URL option 'sslmode'"),
        ("sqlite://", "database.read[0]: sqlite URL needs a file path"),
    ],
)
def test_bad_urls_name_the_setting(url: str, message: str) -> None:
    with pytest.raises(DsnError, match=r"^" + message.replace("[", r"\[").replace("]", r"\]")):
        Dsn.parse(url, "database.read[0]")


def test_which_databases_a_node_uses(tmp_path: Path) -> None:
    embedded = dsns_from_config(config_from_dict({"node": {"data_dir": str(tmp_path)}}))
    assert embedded.write == Dsn("sqlite", path=tmp_path / "sipfleet.db")
    assert embedded.reads == (embedded.write,)
    assert not embedded.has_replica

    config = config_from_dict(
        {
            "database": {
                "write": "mysql://sip@primary/sip",
                "read": ["mysql://sip@replica1/sip", "mysql://sip@replica2/sip"],
            }
        }
    )
    node = dsns_from_config(config)
    assert node.write.host == "primary"
    assert [d.host for d in node.reads] == ["replica1", "replica2"]
    assert node.has_replica
    cli = dsns_from_config(config, "sqlite:///tmp/other.db")
    assert cli.write == cli.reads[0] == Dsn("sqlite", path=Path("/tmp/other.db"))


def test_open_storage_from_config_checks_the_urls() -> None:
    bad = config_from_dict({"database": {"write": "mysql://h/db", "read": ["sqlite:///x.db"]}})
    with pytest.raises(DsnError, match=r"database.read\[0\]: a sqlite replica of a mysql primary"):
        open_storage(bad)


def test_aor_text() -> None:
    assert Aor.parse("sip:Alice@Example.COM") == Aor("Alice", "example.com")
    assert str(Aor.parse("bob@a.org")) == "bob@a.org"
    for bad in ("bob", "@a.org", "bob@", "bob @a.org", "<sip:bob@a.org>"):
        with pytest.raises(InvalidInput, match=r"^subscriber: "):
            Aor.parse(bad, "subscriber")
