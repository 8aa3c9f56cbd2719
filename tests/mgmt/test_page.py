"""The status page in a real browser: headless Chromium (Debian's ``chromium``) loads it
from a role's management API, its script polls the JSON endpoints, and the rendered DOM
must show the pools, the registered phone, the gateways; a screenshot must come out.
Skipped only where chromium is not installed (scripts/setup.sh --test installs it)."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.chromium import CHROMIUM, headless
from tests.mgmt.conftest import Fleet, mgmt_url

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
# virtual time: the first poll at once, the second after 3 s (rates need two)
VIRTUAL_TIME_MS = 4000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium(tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run (as root: no sandbox), its console on stderr."""
    return subprocess.run(
        [
            *headless(tmp_path / "profile"),
            "--enable-logging=stderr",
            f"--virtual-time-budget={VIRTUAL_TIME_MS}",
            *action,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def rendered(tmp_path: Path, url: str) -> Dom:
    run = chromium(tmp_path, url, "--dump-dom")
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    return Dom(run.stdout)


VOID = {"meta", "link", "br", "img", "input", "hr", "source"}  # elements with no end tag


class Dom(HTMLParser):
    """What the tests read of a rendered page: text by element id, which ids are hidden,
    and the body rows of a table by its id (each row: its attributes, its cells' text)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.texts: dict[str, list[str]] = {}
        self.hidden: set[str] = set()
        self.tables: dict[str, list[tuple[dict[str, str | None], list[str]]]] = {}
        self._stack: list[tuple[str, str | None]] = []  # (tag, id) of the open elements
        self._cell: list[str] | None = None
        self.feed(html)

    def _inside(self, tag: str) -> str | None:
        """The id of the innermost open ``tag`` element."""
        return next((element for name, element in reversed(self._stack) if name == tag), None)

    def _within(self, tag: str) -> bool:
        return any(name == tag for name, _ in self._stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        element = found.get("id")
        if element:
            self.texts[element] = []
            if "hidden" in found:
                self.hidden.add(element)
        table = self._inside("table")
        if tag == "table" and element:
            self.tables[element] = []
        elif tag == "tr" and table and self._within("tbody"):
            self.tables[table].append((found, []))
        elif tag == "td" and table and self._within("tbody"):
            self._cell = []
        if tag not in VOID:
            self._stack.append((tag, element))

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            table = self._inside("table")
            assert table is not None
            self.tables[table][-1][1].append("".join(self._cell).strip())
            self._cell = None
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, element in self._stack:
            if element:
                self.texts[element].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def text(self, element: str) -> str:
        return "".join(self.texts[element]).strip()

    def rows(self, table: str) -> list[tuple[dict[str, str | None], list[str]]]:
        return self.tables[table]


def test_the_lb_page_shows_pools_and_registrations(fleet: Fleet, tmp_path: Path) -> None:
    fleet.wait_until_pools_up()
    dom = rendered(tmp_path, fleet.url("lb", "/"))
    assert dom.text("role") == "lb"
    assert "pools-section" not in dom.hidden
    assert "problem" in dom.hidden  # no error shown
    rows = {cells[1]: (attrs, cells) for attrs, cells in dom.rows("pools")}
    for pool, uri in fleet.pool_uris.items():
        attrs, cells = rows[uri]
        assert cells[0] == pool
        assert (cells[2], cells[3]) == ("1", "active")
        assert attrs["data-health"] == "up", cells
        assert cells[4] == "up"
    assert dom.text("registrations") == "1"  # alice, registered in conftest
    assert [cells for _, cells in dom.rows("domains")] == [["example.com", "1", "1"]]
    assert dom.text("ready") == "yes"
    assert dom.text("rate").replace(".", "").isdigit()  # two polls: a rate
    assert "gateways-section" in dom.hidden  # an LB has no LCR


def test_the_proxy_page_shows_gateway_states(fleet: Fleet, tmp_path: Path) -> None:
    dom = rendered(tmp_path, fleet.url("proxy", "/"))
    assert dom.text("role") == "proxy"
    assert "gateways-section" not in dom.hidden
    states = {cells[0]: cells[2] for _, cells in dom.rows("gateways")}
    assert states == {"sipgw1": "up", "sipgw2": "disabled"}
    assert "pools-section" in dom.hidden


def test_a_screenshot_of_the_page(fleet: Fleet, tmp_path: Path) -> None:
    fleet.wait_until_pools_up()
    picture = tmp_path / "lb-status.png"
    chromium(tmp_path, fleet.url("lb", "/"), f"--screenshot={picture}", "--window-size=1280,900")
    data = picture.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 900)
    assert len(data) > 20_000  # a page with tables and text, not a blank canvas


def test_the_page_sends_the_token_from_its_fragment(fleet: Fleet, tmp_path: Path) -> None:
    token = "page-token-1234"
    fleet.cluster.start("registrar", "guarded-page", mgmt={"token": token})
    url = mgmt_url(fleet.cluster, "guarded-page")
    dom = rendered(tmp_path, f"{url}/#token={token}")
    assert "problem" in dom.hidden
    assert dom.text("registrations") == "1"
    dom = rendered(tmp_path, f"{url}/")
    assert "problem" not in dom.hidden
    assert dom.text("problem").startswith("/status: 401 Authorization:")
