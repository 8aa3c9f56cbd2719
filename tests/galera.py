"""A three-node MariaDB Galera cluster for tests and benchmarks (Debian's galera-4).

Each mariadbd runs in a network namespace of its own with its own address on a bridge
made here (in a hub namespace, so nothing touches the machine's network)::

    galera1 10.214.0.1 ---+
    galera2 10.214.0.2 ---+--- br0 (hub namespace)
    galera3 10.214.0.3 ---+

Group communication (4567), IST (4568) and SST (rsync, 4444) run between the namespaces;
the test process and the sipfleet nodes reach each server through its Unix socket. The
first node bootstraps the cluster (--wsrep-new-cluster), the others join it by state
transfer. ``GaleraNode.kill`` stops one with SIGKILL; ``GaleraNode.rejoin`` starts it
again: it recovers its position from InnoDB and catches up by IST. Settings are for
tests: short failure-detection timeouts, no fsync on commit (never for durability).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.dbservers import FAST_MARIADB, MariaDbServer, ServerMissing, _need, start_mariadb
from tests.interop.lab import Namespace

GALERA_LIBRARY = "/usr/lib/galera/libgalera_smm.so"
SUBNET = "10.214.0."
NODES = 3
SYNC_TIMEOUT = 90.0
# Failure detection in about 2 s instead of Galera's 5-15 s: the survivors' commits wait
# until the dead node is out of the view. (keepalive <= suspect <= inactive.)
PROVIDER_OPTIONS = (
    "gcache.size=64M; evs.keepalive_period=PT0.5S; evs.inactive_check_period=PT0.5S; "
    "evs.suspect_timeout=PT1.5S; evs.inactive_timeout=PT3S; evs.install_timeout=PT3S; "
    "gmcast.peer_timeout=PT1S; pc.announce_timeout=PT1S"
)
DB_NAME = "sipfleet"


def why_no_galera() -> str | None:
    """Why a Galera cluster cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "Galera in network namespaces needs root"
    for tool, package in (("ip", "iproute2"), ("rsync", "rsync")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: install the Debian package {package}"
    if not os.path.exists(GALERA_LIBRARY):
        return f"{GALERA_LIBRARY} not found: install the Debian package galera-4"
    try:
        _need(shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), "mariadb-server", "mariadbd")
    except ServerMissing as exc:
        return str(exc)
    return None


@dataclass
class GaleraNode:
    number: int  # 1..3: its address is SUBNET + number
    namespace: Namespace
    server: MariaDbServer

    @property
    def address(self) -> str:
        return f"{SUBNET}{self.number}"

    def dsn(self, database: str = DB_NAME) -> str:
        """What a sipfleet node of this node's site uses (root over the Unix socket)."""
        return self.server.socket_dsn(database)

    def status(self, name: str) -> str:
        row = self.server.sql(f"SHOW GLOBAL STATUS LIKE '{name}'").split()
        return row[1] if len(row) > 1 else ""

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut: no goodbye to the group."""
        self.server.crash()

    def rejoin(self) -> None:
        """Start again with its data: it rejoins the group and catches up by IST from
        the position its InnoDB recovered (what Debian's galera_recovery does under
        systemd; without it a node killed with SIGKILL asks for a full SST)."""
        self.server.options["wsrep-start-position"] = _recovered_position(self.server)
        _open_to_rsync(self.server.base)
        self.server.start()

    def log(self) -> str:
        path = self.server.base / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


@dataclass
class Galera:
    hub: Namespace
    nodes: list[GaleraNode]

    def wait_synced(
        self, nodes: list[GaleraNode] | None = None, timeout: float = SYNC_TIMEOUT
    ) -> None:
        """Until each of ``nodes`` (default: the running ones) is Synced in a primary
        component of exactly them."""
        nodes = nodes or [node for node in self.nodes if node.server.running]
        deadline = time.monotonic() + timeout
        while True:
            states = {n.number: _state(n) for n in nodes}
            if all(state == ("Synced", str(len(nodes))) for state in states.values()):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Galera not synced after {timeout} s: {states}")
            time.sleep(0.1)

    def cut(self, node: GaleraNode) -> None:
        """Unplug the node from the bridge (a site's link fails; the server runs on)."""
        _ip("-n", self.hub.name, "link", "set", f"g{node.number}", "down")

    def reconnect(self, node: GaleraNode) -> None:
        _ip("-n", self.hub.name, "link", "set", f"g{node.number}", "up")

    def settle(self) -> None:
        """Until every running node has applied what the cluster committed so far. A
        commit returns once the cluster has ordered it; the other nodes apply it a moment
        later, and a read there does not wait for it (``wsrep_sync_wait = 0``)."""
        self.sql_everywhere("SELECT COUNT(*) FROM location")

    def sql_everywhere(self, statement: str, database: str = DB_NAME) -> list[str]:
        """``statement`` on each running node, for checks (wsrep_sync_wait: after every
        write the cluster committed, wherever it was made)."""
        return [
            node.server.sql(f"SET SESSION wsrep_sync_wait = 1; {statement}", database)
            for node in self.nodes
            if node.server.running
        ]


def _state(node: GaleraNode) -> tuple[str, str]:
    try:
        return node.status("wsrep_local_state_comment"), node.status("wsrep_cluster_size")
    except RuntimeError:  # still starting
        return "starting", "0"


def _recovered_position(server: MariaDbServer) -> str:
    """``uuid:seqno`` of the last transaction committed in the data directory
    (``mariadbd --wsrep-recover``: InnoDB's crash recovery, then it exits)."""
    log = server.base / "recover.log"
    log.unlink(missing_ok=True)
    mariadbd = _need(
        shutil.which("mariadbd", path="/usr/sbin:/usr/bin"), "mariadb-server", "mariadbd"
    )
    settings = {k: v for k, v in server.options.items() if k != "wsrep-start-position"}
    subprocess.run(
        [mariadbd, "--no-defaults", f"--datadir={server.base / 'data'}", "--user=root",
         "--skip-networking", f"--socket={server.socket_path}",
         f"--pid-file={server.base / 'recover.pid'}", *(f"--{k}={v}" for k, v in settings.items()),
         "--wsrep-recover", f"--log-error={log}"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    found = re.search(r"WSREP: Recovered position: (\S+:-?\d+)", log.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(
            f"mariadbd --wsrep-recover found no position:\n{log.read_text()[-2000:]}"
        )
    return found.group(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _wire(hub: Namespace, ns: Namespace, number: int) -> None:
    """One veth between ``ns`` (eth0, SUBNET.number/24) and the hub's bridge."""
    port = f"g{number}"
    _ip("-n", ns.name, "link", "add", "eth0", "type", "veth", "peer", "name", port,
        "netns", hub.name)  # fmt: skip
    _ip("-n", ns.name, "addr", "add", f"{SUBNET}{number}/24", "dev", "eth0")
    _ip("-n", ns.name, "link", "set", "eth0", "up")
    _ip("-n", hub.name, "link", "set", port, "master", "br0")
    _ip("-n", hub.name, "link", "set", port, "up")


def _settings(number: int) -> dict[str, str]:
    peers = ",".join(f"{SUBNET}{n}" for n in range(1, NODES + 1))
    return FAST_MARIADB | {
        "innodb-buffer-pool-size": "64M",
        "max-connections": "200",
        "wsrep-on": "ON",
        "wsrep-provider": GALERA_LIBRARY,
        "wsrep-cluster-name": "sipfleet-test",
        "wsrep-cluster-address": f"gcomm://{peers}",
        "wsrep-node-address": f"{SUBNET}{number}",
        "wsrep-node-name": f"galera{number}",
        "wsrep-sst-method": "rsync",
        "wsrep-provider-options": PROVIDER_OPTIONS,
        "binlog-format": "ROW",
        "default-storage-engine": "InnoDB",
        "innodb-autoinc-lock-mode": "2",
        "innodb-flush-log-at-trx-commit": "0",
        "wsrep-slave-threads": "2",
    }


def _start_node(hub: Namespace, stack: ExitStack, number: int) -> GaleraNode:
    ns = stack.enter_context(Namespace(f"gal{number}"))
    _wire(hub, ns, number)
    host = f"{SUBNET}{number}"
    if number == 1:  # a new data directory; this start only bootstraps the group
        server = start_mariadb(_settings(number) | {"wsrep-new-cluster": "1"}, 3306,
                               host=host, netns=ns.name)  # fmt: skip
        server.options.pop("wsrep-new-cluster")
        stack.callback(server.destroy)
    else:
        server = _joiner(_settings(number), host, ns.name)
        stack.callback(server.destroy)
        server.start()  # returns once the state transfer is done and it accepts clients
    return GaleraNode(number, ns, server)


def _open_to_rsync(base: Path) -> None:
    """The joiner's side of a state transfer (even an IST leaves a marker file) is an
    rsync daemon that drops root for ``nobody`` (rsyncd's default): the data directory
    must be that user's (mariadbd, as root, reads it all the same)."""
    base.chmod(0o755)
    data = base / "data"
    for path in [data, *data.rglob("*")]:
        shutil.chown(path, "nobody", "nogroup")


def _joiner(options: dict[str, str], host: str, netns: str) -> MariaDbServer:
    """A server with an empty data directory, filled by the state transfer."""
    base = Path(tempfile.mkdtemp(prefix="sipfleet-galera-"))
    (base / "data").mkdir()
    _open_to_rsync(base)
    server = MariaDbServer("mysql", base, 3306, "root", options)
    server.host = host
    server.netns = netns
    return server


@contextmanager
def galera_cluster(database: str = DB_NAME) -> Iterator[Galera]:
    """Three Synced nodes with an empty ``database``; all stopped and deleted after."""
    with ExitStack() as stack:
        hub = stack.enter_context(Namespace(f"galhub{secrets.token_hex(1)}"))
        _ip("-n", hub.name, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub.name, "link", "set", "br0", "up")
        first = _start_node(hub, stack, 1)
        first.server.sql(f"CREATE DATABASE {database}")
        nodes = [first] + [_start_node(hub, stack, n) for n in range(2, NODES + 1)]
        cluster = Galera(hub, nodes)
        cluster.wait_synced()
        yield cluster


def ist_received(node: GaleraNode) -> bool:
    """Whether the node's last join caught up by IST (incremental) rather than a full SST."""
    log = node.log()
    last_start = log.rfind("Starting MariaDB")
    return "IST received" in log[last_start:]


if __name__ == "__main__":  # a manual check: python -m tests.galera
    started = time.monotonic()
    with galera_cluster() as galera:
        print(f"3 nodes synced in {time.monotonic() - started:.1f} s")
        galera.nodes[0].kill()
        galera.wait_synced()
        galera.nodes[1].server.sql("CREATE TABLE t (id INT PRIMARY KEY)", DB_NAME)
        started = time.monotonic()
        galera.nodes[0].rejoin()
        galera.wait_synced()
        print(
            f"rejoined in {time.monotonic() - started:.1f} s; IST: {ist_received(galera.nodes[0])}"
        )
        print(galera.sql_everywhere("SHOW TABLES"))
