"""The node configuration: one TOML file per node, every key documented here.

Each role reads its own section; ``sipfleet check-config`` reports errors by key name.
Secrets may come from the environment (SIPFLEET_CLUSTER_SECRET, SIPFLEET_DB_WRITE, ...).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sipfleet.config.edge import EdgeSection
from sipfleet.config.listen import ListenAddress, parse_listen

DigestAlgorithm = Literal["SHA-256", "MD5"]
# MD5 alone: most deployed phones know only MD5 and many read only the first challenge
# (baresip 1.0, sipp 3.6 stop at a SHA-256 one). SHA-256 (RFC 8760) by configuration.
DEFAULT_DIGEST_ALGORITHMS: tuple[DigestAlgorithm, ...] = ("MD5",)


def default_data_dir() -> Path:
    """The same for `sipfleet up` and every other command, so they share one database."""
    if os.geteuid() == 0:
        return Path("/var/lib/sipfleet")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "sipfleet"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(Section):
    name: str = Field("sipfleet", description="Node name, used in logs and metrics.")
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Where the embedded SQLite database lives (root: /var/lib/sipfleet, "
        "other users: ~/.local/share/sipfleet).",
    )
    cluster_secret: str = Field(
        "",
        description="Shared by every node: signs nonces, flow tokens and privacy data. "
        "Set it from the environment (SIPFLEET_CLUSTER_SECRET) in production.",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or one JSON object per line (time, level, logger, "
        "message, role, worker, call_id) for a log shipper; --log-format overrides it.",
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes per role, sharing its addresses (SO_REUSEPORT). "
        "The proxy's workers each own the Call-IDs that hash to them: a worker hands a "
        "message it does not own to its owner, so a transaction and its dialog stay in one.",
    )


class DatabaseSection(Section):
    write: str = Field(
        "",
        description="DSN of the primary (sqlite:///path, mysql://, postgresql://). "
        "Empty: SQLite under node.data_dir.",
    )
    read: list[str] = Field(
        default_factory=list, description="DSNs of the local replicas; empty: use write."
    )
    pool_size: int = Field(8, ge=1, le=256, description="Connections per DSN and process.")
    retry_primary_on_miss: bool = Field(
        True,
        description="A location lookup that finds nothing on a replica is retried on the primary.",
    )
    read_fallback: Literal["primary", "fail"] = Field(
        "primary",
        description="When no replica of database.read answers: read from the primary "
        '("primary") or fail the read ("fail": the proxy answers 503 with Retry-After, '
        "which keeps the load off the primary). A replica that is down is tried again every "
        "second and used as soon as it answers. MariaDB and PostgreSQL only.",
    )
    max_in_flight: int = Field(
        256, ge=1, description="Queries in flight before the node sheds load (503)."
    )


class SipSection(Section):
    domains: list[str] = Field(
        default_factory=list,
        description="Domains this cluster serves: the registrar takes REGISTERs for them, "
        "the proxy authenticates callers from them and looks callees in them up in the "
        "location table; calls to other domains go off-net (LCR). Empty: every domain is "
        "served, by the registrar and the proxy alike (users are found by the AOR's own "
        "domain; nothing goes off-net, so name the domains when you use LCR).",
    )
    t1_ms: int = Field(500, ge=10, description="RFC 3261 T1: RTT estimate.")
    t2_ms: int = Field(4000, ge=10, description="RFC 3261 T2: maximum retransmit interval.")
    t4_ms: int = Field(
        5000, ge=10, description="RFC 3261 T4: maximum time a message stays in the network."
    )
    timer_c_s: int = Field(
        180, ge=1, description="Proxy INVITE timer C (seconds, > 3 minutes per RFC)."
    )
    max_message_size: int = Field(
        65535, ge=1024, le=1_048_576, description="Larger messages get 513."
    )
    max_tcp_connections: int = Field(
        10000, ge=1, description="Accepted TCP connections per process."
    )
    tcp_idle_timeout_s: int = Field(
        600, ge=1, description="Idle TCP connections without a binding are closed."
    )
    tcp_read_timeout_s: float = Field(
        30.0, gt=0, description="A partial message must complete within this time."
    )
    auth_algorithms: list[DigestAlgorithm] = Field(
        default_factory=lambda: list(DEFAULT_DIGEST_ALGORITHMS),
        description="Digest challenges offered, one WWW-/Proxy-Authenticate each, in this "
        'order (RFC 8760). Default MD5 only, which every phone answers; ["SHA-256", "MD5"] '
        "also offers SHA-256, first, to clients that read every challenge (many phones "
        "read only the first and know only MD5).",
        min_length=1,
    )
    nonce_lifetime_s: float = Field(300.0, gt=0, description="A nonce is stale after this.")
    max_transactions: int = Field(
        200_000,
        ge=1,
        description="Transactions a proxy keeps, in progress or answered and waiting out "
        "their timers (32 s over UDP), before new requests get 503: what bounds its memory "
        "(about 6 kB each in RSS; a call keeps 3 for 32 s and 1 for 5 s: the default holds "
        "about 1,980 calls/s in about 1.3 GB).",
    )


class LbSection(Section):
    listen: list[ListenAddress] = Field(
        default_factory=lambda: [
            parse_listen("udp:127.0.0.1:5060"),
            parse_listen("tcp:127.0.0.1:5060"),
        ],
        description="Where clients reach the cluster (may be a public address).",
    )
    internal_listen: list[ListenAddress] = Field(
        default_factory=list,
        description="Where the LB talks to registrars and proxies: its Path and the inner "
        "of a double Record-Route name it. Empty: the same as listen.",
    )
    advertise: str = Field(
        "",
        description="The public address clients reach lb.listen at, when the host sits "
        "behind 1:1 NAT (cloud hosts): HOST or HOST:PORT (IPv6 in brackets). The LB's Via and "
        "Record-Route toward clients name it; needs lb.internal_listen for the inside.",
    )
    id: int = Field(
        -1,
        ge=-1,
        le=65535,
        description="Names this LB in its flow tokens (0-65535); every LB of a cluster needs "
        "its own. -1: derived from the first internal listen address.",
    )
    force_rport: bool = Field(
        True,
        description="Answer every client at the address and port its request came from "
        "(RFC 3581 rport), also when it did not ask.",
    )
    keepalive: bool = Field(True, description="Ping registered flows (NAT keepalive).")
    keepalive_method: Literal["options", "crlf"] = Field(
        "options",
        description="NAT keepalive ping over UDP: OPTIONS (answered: failures are counted) or "
        "CRLFCRLF (cheaper, unanswered). TCP flows always get CRLFCRLF (RFC 5626).",
    )
    keepalive_interval_s: float = Field(
        20.0,
        gt=0,
        description="Every flow is pinged once per interval, spread evenly over it; keep it "
        "below the NAT's UDP mapping timeout (often 30 s).",
    )
    probe_interval_s: float = Field(5.0, gt=0, description="OPTIONS health check of pool targets.")
    pool_reload_s: float = Field(
        2.0, gt=0, description="How often lb_target is read again (pools changed at run time)."
    )
    spread: Literal["random", "hash"] = Field(
        "random",
        description="How UDP datagrams are dealt to the workers: requests at random and "
        "responses by transaction (every worker busy even when a few peers, such as the "
        "proxies, send most of them; one transaction's responses kept in order) or all by "
        "source address (the kernel's SO_REUSEPORT default).",
    )
    tls_certificate: str = Field(
        "",
        description="PEM certificate (with its chain) of the tls: and wss: listeners. Reloaded "
        "without a restart on SIGHUP, POST /tls/reload, or when the file changes.",
    )
    tls_key: str = Field("", description="PEM private key of tls_certificate (no passphrase).")

    @field_validator("advertise")
    @classmethod
    def _advertise_is_a_hostport(cls, value: str) -> str:
        if value and parse_hostport(value) is None:
            raise ValueError(f"{value!r} is not HOST or HOST:PORT (IPv6 as [addr] or [addr]:port)")
        return value

    @model_validator(mode="after")
    def _advertise_needs_an_inside(self) -> LbSection:
        if self.advertise and not self.internal_listen:
            raise ValueError(
                "lb.advertise: needs lb.internal_listen (the address the registrars and "
                "proxies reach the LB at): the advertised address is for clients only"
            )
        return self

    @model_validator(mode="after")
    def _tls_needs_files(self) -> LbSection:
        for address in self.internal_listen:
            if address.transport in CLIENT_TRANSPORTS:
                raise ValueError(
                    f"lb.internal_listen: {address.transport} is for clients (lb.listen); "
                    "the internal side talks udp or tcp"
                )
        secure = {a.transport for a in self.listen if a.transport in ("tls", "wss")}
        if secure:
            kinds = " and ".join(sorted(secure))
            for key in ("tls_certificate", "tls_key"):
                if not getattr(self, key):
                    raise ValueError(
                        f"lb.{key}: must be set for the {kinds} listeners of lb.listen"
                    )
        return self


def parse_hostport(text: str) -> tuple[str, int | None] | None:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; None when it is none of them."""
    found = HOSTPORT.fullmatch(text.strip())
    if found is None:
        return None
    host = found.group("v6") or found.group("host")
    port = int(found.group("port")) if found.group("port") else None
    if port is not None and not 0 < port < 65536:
        return None
    return host, port


HOSTPORT = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?"
)

# Served to clients by the LB only: TLS, and SIP over WebSocket (RFC 7118) for browsers
CLIENT_TRANSPORTS = ("tls", "ws", "wss")


def only_udp_or_tcp(key: str, listen: list[ListenAddress]) -> list[ListenAddress]:
    """Only the LB serves TLS and WebSocket (its clients); the nodes behind it talk udp
    or tcp."""
    for address in listen:
        if address.transport in CLIENT_TRANSPORTS:
            raise ValueError(
                f"{key}: {address.transport} is served by the LB only (lb.listen); use udp or tcp"
            )
    return listen


class RegistrarSection(Section):
    listen: list[ListenAddress] = Field(
        default_factory=lambda: [parse_listen("udp:127.0.0.1:5070")],
        description="Where the LB reaches the registrar.",
    )

    @field_validator("listen")
    @classmethod
    def _no_tls(cls, listen: list[ListenAddress]) -> list[ListenAddress]:
        return only_udp_or_tcp("registrar.listen", listen)

    realm: str = Field("", description="Digest realm; empty: the AOR's domain.")
    authenticate: bool = Field(True, description="Require digest authentication for REGISTER.")
    default_expires: int = Field(3600, ge=1)
    min_expires: int = Field(60, ge=0)
    max_expires: int = Field(7200, ge=1)
    max_contacts: int = Field(10, ge=1, description="Bindings per AOR.")
    trusted_lbs: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Source addresses whose Path / flow tokens are trusted.",
    )
    purge_interval_s: float = Field(
        60.0, gt=0, description="How often expired bindings are deleted."
    )


class ProxySection(Section):
    listen: list[ListenAddress] = Field(
        default_factory=lambda: [parse_listen("udp:127.0.0.1:5080")],
        description="Where the LB reaches the proxy.",
    )

    @field_validator("listen")
    @classmethod
    def _no_tls(cls, listen: list[ListenAddress]) -> list[ListenAddress]:
        return only_udp_or_tcp("proxy.listen", listen)

    policy: str = Field(
        "sipfleet.routing.default", description="Python module with the routing policy."
    )
    authenticate: bool = Field(True, description="Require Proxy-Authorization from local callers.")
    from_must_match_auth: bool = Field(
        True, description="The From user must be the authenticated user."
    )
    trusted_peers: list[str] = Field(
        default_factory=list, description="Addresses (gateways) whose requests skip authentication."
    )
    serial_forking: bool = Field(
        False, description="Fork by q-value groups instead of all at once."
    )
    trusted_lbs: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Source addresses of the LBs in front: for a request from one of them the "
        "caller's address (for trusted_peers) is the one the LB stamped in the Via below its own.",
    )
    pool_reload_s: float = Field(
        2.0,
        gt=0,
        description="How often the proxy re-reads the LB's proxy pool (lb_target): every "
        "member's Record-Route is taken as its own, so a dialog outlives its proxy.",
    )
    aliases: list[str] = Field(
        default_factory=list,
        description="Other host[:port] names of this proxy (a DNS name, a public address): a "
        "Route or Request-URI naming one of them or a listen address is the proxy itself.",
    )
    realm: str = Field("", description="Digest realm for callers; empty: the caller's domain.")
    record_route: bool = Field(
        True, description="Record-Route dialog-creating requests (keep the proxy in the dialog)."
    )
    flow_timeout_s: float = Field(
        4.0,
        gt=0,
        description="A phone registered over several flows (RFC 5626, e.g. through two LBs) "
        "is called over its newest one; a request that hears nothing back over it (not even "
        "100 Trying) within this time goes to the next flow, as on a 430 Flow Failed.",
    )
    max_routing: int = Field(
        2000,
        ge=1,
        description="Requests waiting for the routing policy or the database; past it new "
        "requests get 503 with Retry-After.",
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After of the 503 sent when the database is unreachable."
    )
    lcr_reload_interval_s: float = Field(
        5.0, gt=0, description="How often the LCR version is read; the tables reload when it moved."
    )
    lcr_trunk_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A trunk that neither rings (18x) nor answers finally within this time is "
        "given up (cancelled when it sent 100 Trying) and the next trunk is tried.",
    )
    lcr_defunct_after: int = Field(
        3,
        ge=1,
        description="Consecutive failures (408, 5xx, timeout, transport) of a gateway "
        "that mark it defunct.",
    )
    lcr_defunct_s: float = Field(
        60.0,
        gt=0,
        description="A defunct gateway is skipped until it answers an OPTIONS probe, at most "
        "this long (then calls try it again).",
    )
    lcr_probe_interval_s: float = Field(
        5.0, gt=0, description="OPTIONS probe of each defunct gateway, this often."
    )
    foreign_callers: Literal["refuse", "deliver"] = Field(
        "refuse",
        description="A request whose From names a domain this cluster does not serve, from "
        "an address that is not a trusted peer, cannot authenticate: 'refuse' answers it 403 "
        "whoever it is for; 'deliver' lets it reach local users (SIP between providers), "
        "with 480 for a user who is unknown or not registered alike (no enumeration).",
    )
    privacy_clir: bool = Field(
        True,
        description="Hide callers whose clir preference (usr_preferences) is 1/on/yes/true "
        "from the callee, as if they had sent Privacy: id (the default policy reads it).",
    )
    privacy_hide_contact_user: bool = Field(
        False,
        description="A private call's Contact user part becomes 'anonymous' toward the callee "
        "(and is restored in the callee's requests to it).",
    )


RELAY_ADDRESS = re.compile(r"udp:(\[[0-9A-Fa-f:.]+\]|[^:\[\]=\s]+):[0-9]{1,5}(=[0-9]{1,4})?")


class MediaSection(Section):
    """The media relay (rtpengine, ng protocol) the proxies drive for calls through NAT."""

    relays: list[str] = Field(
        default_factory=lambda: ["udp:127.0.0.1:2223"],
        description="rtpengine control addresses, 'udp:HOST:PORT' or 'udp:HOST:PORT=WEIGHT' "
        "(Kamailio's rtpengine_sock form). Default: the ng port of an rtpengine on this host "
        "(Debian's rtpengine-daemon). A relay that does not answer is skipped; with none up, "
        "calls go on without one.",
    )
    mode: Literal["nat", "always", "never"] = Field(
        "nat",
        description="Relay a call's media when either side is behind NAT (a private address "
        "in its SDP or Contact, or media from another address than its signalling), always, "
        "or never. A routing policy may decide per call (CallContext.relay_media).",
    )
    timeout_s: float = Field(
        1.0, gt=0, le=10, description="A relay that has not answered a command by then failed it."
    )
    ping_interval_s: float = Field(5.0, gt=0, description="Health check of each relay, this often.")

    @field_validator("relays")
    @classmethod
    def _relay_addresses(cls, relays: list[str]) -> list[str]:
        for entry in relays:
            if not RELAY_ADDRESS.fullmatch(entry):
                raise ValueError(
                    f"{entry!r} is not 'udp:HOST:PORT' or 'udp:HOST:PORT=WEIGHT' "
                    "(IPv6 in brackets: 'udp:[::1]:2223')"
                )
        return relays


class AccountingSection(Section):
    """Call records (CDRs) in the ``acc`` table, written by the proxies."""

    enabled: bool = Field(
        True, description="Write a record for every INVITE the proxy answers (answered or failed)."
    )
    max_call_s: int = Field(
        14_400,
        ge=60,
        description="A call with no BYE after this long is closed in its record "
        "(ended_by 'max-duration'): a lost BYE must not bill for ever.",
    )
    sweep_interval_s: float = Field(
        60.0, gt=0, description="Each proxy closes overdue records this often."
    )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8 and ::1: the management API needs no token there."""
    return ipaddress.ip_address(host).is_loopback


class MgmtSection(Section):
    listen: str = Field(
        "127.0.0.1:0",
        description="HOST:PORT of the HTTP management API, status page and metrics "
        "(IPv6 as [addr]:port; port 0: any free port, reported by the role). Loopback "
        "(127.0.0.0/8, ::1) by default; any other address needs mgmt.token. Empty: no API.",
    )
    token: str = Field(
        "",
        description="Bearer token every request to the management API must carry "
        "(Authorization: Bearer TOKEN); required when mgmt.listen is not loopback. Set "
        "it from the environment (SIPFLEET_MGMT_TOKEN) in production.",
    )
    metrics: bool = Field(
        True,
        description="Each worker publishes its counters for /metrics once a second "
        "(false: nothing is published; for measuring what the metrics cost).",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        if listen:
            try:
                parse_listen(f"tcp:{listen}")
            except ValueError:
                raise ValueError(
                    f"{listen!r} is not IP:PORT (IPv6 as [addr]:port; port 0 to 65535)"
                ) from None
        return listen

    @model_validator(mode="after")
    def _token_off_loopback(self) -> MgmtSection:
        address = self.address
        if address is not None and not self.token and not is_loopback(address.host):
            raise ValueError(
                f"mgmt.token: must be set when mgmt.listen ({self.listen}) is not a "
                "loopback address (in the config or SIPFLEET_MGMT_TOKEN): the API can "
                "change the pools and the log level"
            )
        return self

    @property
    def address(self) -> ListenAddress | None:
        """Where the API listens (transport tcp); None when it is switched off."""
        return parse_listen(f"tcp:{self.listen}") if self.listen else None


class ClusterSection(Section):
    """Read by `sipfleet up` only (one host trying the cluster); `sipfleet run` ignores it."""

    registrars: int = Field(
        1,
        ge=1,
        le=16,
        description="Registrar processes `sipfleet up` starts: the n-th (from 0) listens on "
        "every registrar.listen address with its port + n. Each is put in the LB's pool.",
    )
    proxies: int = Field(
        1,
        ge=1,
        le=16,
        description="Proxy processes `sipfleet up` starts: the n-th (from 0) listens on every "
        "proxy.listen address with its port + n. Each is put in the LB's pool.",
    )


class Config(Section):
    node: NodeSection = Field(default_factory=NodeSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)
    sip: SipSection = Field(default_factory=SipSection)
    lb: LbSection = Field(default_factory=LbSection)
    edge: EdgeSection = Field(default_factory=EdgeSection)
    registrar: RegistrarSection = Field(default_factory=RegistrarSection)
    proxy: ProxySection = Field(default_factory=ProxySection)
    media: MediaSection = Field(default_factory=MediaSection)
    accounting: AccountingSection = Field(default_factory=AccountingSection)
    mgmt: MgmtSection = Field(default_factory=MgmtSection)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
