"""`sipfleet up`'s banner names each role's status page and metrics, and `sipfleet status`
shows the cluster: each role's API, the LB pools and registrations from the database, and
another node's API given with --url (a role started apart, with a token)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from sipfleet.cli import main
from tests.cli.test_up_cluster import DOMAIN, start_up, wait_for
from tests.integration.harness import RawUa, running_cluster

TOKEN = "status-test-token"
PROMTOOL = shutil.which("promtool")


def promtool_accepts(text: str) -> None:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (Debian: prometheus; scripts/setup.sh --test)")
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "sipfleet_sip_requests_total" in text


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status, answer.read().decode()


def test_banner_urls_and_the_cluster_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with start_up(tmp_path, registrars=1, proxies=1) as up:
        wait_for(lambda: "Stop with Ctrl-C" in up.output, timeout=60)
        banner = dict(
            re.findall(
                r"^  (\w+) +(http://127\.0\.0\.1:\d+)/  metrics: \2/metrics$", up.output, re.M
            )
        )
        assert sorted(banner) == ["lb", "proxy", "registrar"], up.output
        for name, url in banner.items():
            assert _get(f"{url}/")[0] == 200
            body = _get(f"{url}/status")[1]
            assert json.loads(body)["role"] == name
            promtool_accepts(_get(f"{url}/metrics")[1])  # Prometheus could scrape it

        phone = RawUa(("127.0.0.1", up.ports["registrar"]))
        try:
            phone.request("REGISTER", f"sip:{DOMAIN}", user="carol", expires=600)
            phone.expect_response(200)
        finally:
            phone.close()

        # another node, outside this `up`, with a token: asked through --url
        with running_cluster(
            tmp_path / "other", dsn=f"sqlite:///{up.data_dir / 'sipfleet.db'}"
        ) as other:
            other.start("registrar", "remote", mgmt={"token": TOKEN})
            remote = json.loads((other.workdir / "remote.ready").read_text())["mgmt"]
            monkeypatch.setenv("SIPFLEET_MGMT_TOKEN", TOKEN)

            def shown() -> str:
                capsys.readouterr()
                code = main(["status", "--data-dir", str(up.data_dir), "--url", remote])
                out = capsys.readouterr().out
                assert code == 0, out
                return out

            wait_for(lambda: shown().count(": up since") == 2, timeout=15)
            out = shown()
            for name in ("lb", "registrar", "proxy"):
                assert re.search(
                    rf"^  {name} +{banner[name]}  {name} sipfleet, up \d+s, 1 worker, "
                    r"\d+ requests, database up$",
                    out,
                    re.M,
                ), out
            assert re.search(
                rf"^  {re.escape(remote)} +{re.escape(remote)}  registrar remote, up", out, re.M
            ), out
            assert f"registrar  sip:127.0.0.1:{up.ports['registrar']}  weight=1  active" in out
            assert f"proxy      sip:127.0.0.1:{up.ports['proxy']}  weight=1  active" in out
            assert f"  {DOMAIN}  1 AORs, 1 bindings" in out

            capsys.readouterr()
            assert main(["status", "--data-dir", str(up.data_dir), "--json"]) == 0
            cluster = json.loads(capsys.readouterr().out)["cluster"]
            assert cluster["registrations"] == {DOMAIN: {"aors": 1, "bindings": 1}}
            assert {api["name"] for api in cluster["apis"]} == {"lb", "registrar", "proxy"}

            monkeypatch.delenv("SIPFLEET_MGMT_TOKEN")  # without it: the node says 401
            capsys.readouterr()
            main(["status", "--data-dir", str(up.data_dir), "--url", remote])
            assert f"{remote}  HTTP 401: Authorization" in capsys.readouterr().out


def test_status_url_must_be_http(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["status", "--data-dir", str(tmp_path), "--url", "file:///etc/passwd"])
    assert exit.value.code == 2
    assert (
        "--url: 'file:///etc/passwd' is not an http:// or https:// URL" in capsys.readouterr().err
    )


def test_status_without_up_still_reads_the_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path)]) == 3
    captured = capsys.readouterr()
    assert "sipfleet up is not running (no " in captured.err
    assert f"database sqlite://{tmp_path}/sipfleet.db: no database at" in captured.out
    assert not (tmp_path / "sipfleet.db").exists()  # a status never creates one
