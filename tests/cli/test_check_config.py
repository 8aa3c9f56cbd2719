"""`sipfleet check-config`, and the example cluster configs it must pass.

Every node config under examples/cluster/ loads and passes check-config for the role its
name says; the MariaDB and PostgreSQL snippets name only settings those servers know; the
systemd unit's command lines are ones sipfleet accepts.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sipfleet.cli import build_parser, main
from sipfleet.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "cluster"
NODE_CONFIGS = sorted(EXAMPLES.rglob("*.toml"))
SECRET_ENV = {
    "SIPFLEET_CLUSTER_SECRET": "an-example-secret-of-32-characters",
    "SIPFLEET_MGMT_TOKEN": "an-example-token",  # the examples' APIs listen off loopback
}


def role_of(path: Path) -> str:
    """lb.toml -> lb, registrar2.toml -> registrar, cluster.toml (sipfleet up) -> all."""
    name = path.stem.rstrip("0123456789")
    return name if name in ("lb", "registrar", "proxy") else "all"


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    status = main(["check-config", *args])
    out, err = capsys.readouterr()
    return status, out + err


def test_there_are_examples_for_every_role_and_both_databases() -> None:
    names = {str(path.relative_to(EXAMPLES)) for path in NODE_CONFIGS}
    for prefix in ("", "postgresql/"):
        for node in ("lb", "registrar1", "registrar2", "proxy1", "proxy2"):
            assert f"{prefix}{node}.toml" in names
    assert "cluster.toml" in names


@pytest.mark.parametrize("path", NODE_CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_config_loads_and_passes_check_config(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SECRET_ENV.items():
        monkeypatch.setenv(key, value)
    config = load_config(path)
    assert config.node.cluster_secret == SECRET_ENV["SIPFLEET_CLUSTER_SECRET"]
    status, out = check(capsys, "--role", role_of(path), "-c", str(path))
    assert status == 0, out
    assert f"{path}: OK for" in out
    assert "warning" not in out, out


def test_the_multi_host_examples_agree_with_each_other() -> None:
    """What one node's file says about another matches that node's own file."""
    for variant in (EXAMPLES, EXAMPLES / "postgresql"):
        lb = load_config(variant / "lb.toml", env=SECRET_ENV)
        lb_hosts = {a.host for a in [*lb.lb.internal_listen, *lb.lb.listen]}
        writes = set()
        for name in ("registrar1", "registrar2", "proxy1", "proxy2"):
            node = load_config(variant / f"{name}.toml", env=SECRET_ENV)
            section = node.registrar if name.startswith("registrar") else node.proxy
            assert set(section.trusted_lbs) <= lb_hosts  # the LB's internal address
            writes.add(node.database.write)
            if name.startswith("proxy"):
                assert node.database.read, f"{name} reads a replica"
                assert node.database.read != [node.database.write]
        assert writes == {lb.database.write}  # one primary


def test_errors_are_named_by_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[node]\ncluster_secret = "short"\n'
        '[database]\nwrite = "mysql://sip:pw@10.0.0.1/sipfleet"\n'
        'read = ["postgresql://sip@10.0.0.2/sipfleet"]\n'
        "[registrar]\nmin_expires = 100\ndefault_expires = 50\n"
        'trusted_lbs = ["10.0.0.0/24"]\n'
        '[lb]\nlisten = ["udp:0.0.0.0:5060"]\n'
        '[proxy]\npolicy = "no_such_policy_module"\n'
    )
    status, out = check(capsys, str(bad))
    assert status == 1
    assert f"{bad}: 5 error(s)" in out
    for expected in (
        "database.read[0]: a postgresql replica of a mysql primary",
        "lb.listen[0]: udp:0.0.0.0:5060 cannot be written in a Via",
        "registrar.default_expires: 50 is outside registrar.min_expires",
        "registrar.trusted_lbs[0]: '10.0.0.0/24' is not an IP address",
        "proxy.policy: cannot import 'no_such_policy_module'",
        "warning: node.cluster_secret: only 5 characters",
    ):
        assert expected in out, out
    # Only the role the file is for: an LB's file is not judged by the proxy's keys.
    status, out = check(capsys, "--role", "registrar", str(bad))
    assert "proxy.policy" not in out
    assert "lb.listen" not in out


def test_model_errors_name_the_key_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "typo.toml"
    bad.write_text('[registrar]\nlistn = ["udp:127.0.0.1:5070"]\nmax_contacts = 0\n')
    status, out = check(capsys, "-c", str(bad))
    assert status == 1
    assert "registrar.listn: unknown key" in out
    assert "registrar.max_contacts: Input should be greater than or equal to 1" in out


def test_a_missing_secret_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = tmp_path / "node.toml"
    node.write_text("[node]\nname = 'x'\n")
    status, out = check(capsys, str(node))
    assert status == 1
    assert "node.cluster_secret: not set" in out


def test_connect_reports_an_unmigrated_database_by_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node.toml"
    node.write_text(
        f'[node]\ncluster_secret = "{SECRET_ENV["SIPFLEET_CLUSTER_SECRET"]}"\n'
        f'[database]\nwrite = "sqlite:///{tmp_path / "sip.db"}"\n'
    )
    status, out = check(capsys, "--connect", str(node))
    assert status == 1
    assert "database.write: " in out
    assert "run `sipfleet db upgrade`" in out
    assert main(["db", "upgrade", "-c", str(node)]) == 0
    status, out = check(capsys, "--connect", str(node))
    assert status == 0, out


def test_show_prints_the_effective_config_without_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = tmp_path / "node.toml"
    node.write_text(
        '[node]\ncluster_secret = "do-not-print-this-secret-value"\n'
        '[database]\nwrite = "mysql://sip:hunter2@10.0.0.1/sipfleet"\n'
    )
    status, out = check(capsys, "--show", str(node))
    assert status == 0, out
    assert 'cluster_secret = "***"' in out
    assert "mysql://sip:***@10.0.0.1/sipfleet" in out
    assert "hunter2" not in out
    assert "do-not-print" not in out
    assert 'read_fallback = "primary"' in out  # defaults are shown too


def test_the_systemd_unit_runs_commands_sipfleet_accepts() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(EXAMPLES / "systemd" / "sipfleet@.service")
    service = unit["Service"]
    assert service["User"] == "sipfleet"
    assert service["EnvironmentFile"] == "/etc/sipfleet/secret.env"
    for key in ("ExecStartPre", "ExecStart"):
        for role in ("lb", "registrar", "proxy"):
            argv = shlex.split(service[key].replace("%i", role))
            assert argv[0].endswith("/sipfleet")
            args = build_parser().parse_args(argv[1:])  # exits on an unknown option
            assert args.config == Path(f"/etc/sipfleet/{role}.toml")


def _server_settings(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line and not line.startswith("["):
            names.append(line.split("=", 1)[0].strip())
    return names


@pytest.mark.parametrize("snippet", ["primary.cnf", "replica.cnf"])
def test_the_mariadb_snippets_name_only_known_settings(snippet: str) -> None:
    mariadbd = shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    if mariadbd is None:
        pytest.skip("mariadbd is not installed")
    path = EXAMPLES / "mariadb" / snippet
    assert _server_settings(path)
    result = subprocess.run(
        [mariadbd, f"--defaults-file={path}", "--help", "--verbose"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("snippet", ["primary.conf", "standby.conf"])
def test_the_postgresql_snippets_name_only_known_settings(snippet: str) -> None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        pytest.skip("PostgreSQL is not installed")
    known = subprocess.run(
        [str(found[-1]), "--describe-config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        user="postgres" if os.geteuid() == 0 else None,  # postgres refuses to run as root
    ).stdout
    names = {line.split("\t", 1)[0] for line in known.splitlines()}
    settings = _server_settings(EXAMPLES / "postgresql" / snippet)
    assert settings
    assert set(settings) <= names, set(settings) - names


def test_the_sql_setup_matches_the_node_configs() -> None:
    """The account and database the setup scripts create are the ones the nodes use."""
    for variant, sql in ((EXAMPLES, "mariadb"), (EXAMPLES / "postgresql", "postgresql")):
        setup = (EXAMPLES / sql / "setup-primary.sql").read_text()
        node = load_config(variant / "proxy1.toml", env=SECRET_ENV)
        for dsn in [node.database.write, *node.database.read]:
            user, password, database = re.findall(r"//(\w+):([^@]+)@[^/]+/(\w+)", dsn)[0]
            assert user in setup
            assert f"'{password}'" in setup
            assert f"DATABASE {database}" in setup or f"EXISTS {database}" in setup
