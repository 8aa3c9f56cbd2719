"""``[edge]``: abuse protection at the LB, the cluster's only face to the internet.

Its own module so the TLS and listen settings in ``model.py`` and these evolve apart;
``Config.edge`` holds it. Every limit is per LB worker (docs/lb.md, "Abuse protection").
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

# User-Agent substrings of the common SIP scanners (sipvicious and its forks, sipcli,
# the VaxSIP SDK as packaged for toll fraud, sundayddr, sip-scan, iWar); matched
# case-insensitively. Real phones and PBXs do not call themselves any of these.
DEFAULT_SCANNER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sundayddr",
    "sip-scan",
    "sipsak",
    "iwar",
    "pplsip",
)


class EdgeSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_per_s: float = Field(
        100.0,
        ge=0,
        description="Requests a second one source address may send (a token bucket); 0: no "
        "limit. Sized for a NAT of a few hundred phones: a phone registering every minute "
        "through a challenge sends 2 requests a minute; calls add a handful per call.",
    )
    burst: float = Field(
        400.0,
        ge=1,
        description="Requests a quiet source may send at once before rate_per_s applies "
        "(phones re-registering together after an outage).",
    )
    max_sources: int = Field(
        16384,
        ge=16,
        le=1 << 22,
        description="Source addresses tracked per LB worker (about 200 bytes each); past "
        "it the longest-tracked gives way, so an attacker's address space cannot grow it.",
    )
    exempt: list[str] = Field(
        default_factory=list,
        description="Addresses never limited nor locked out (carriers, PBXs, monitors), on "
        "top of [proxy] trusted_peers, the LCR gateways and the cluster's own nodes.",
    )
    lockout_failures: int = Field(
        5,
        ge=0,
        description="Wrong digest answers for one user from one source address before that "
        "pair is locked out; 0: no lockout. The user's own address is another pair.",
    )
    lockout_s: float = Field(
        30.0, gt=0, description="The first lockout; each further one doubles it."
    )
    lockout_max_s: float = Field(
        3600.0, gt=0, description="The longest lockout; a pair quiet this long is forgotten."
    )
    max_lockouts: int = Field(
        16384, ge=16, le=1 << 22, description="(user, source) pairs tracked per LB worker."
    )
    scanner_filter: bool = Field(
        True,
        description="Drop requests whose User-Agent names a known SIP scanner (silently: "
        "scanners take silence for no server).",
    )
    scanner_agents: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SCANNER_AGENTS),
        description="User-Agent substrings (case-insensitive) the scanner filter drops.",
    )
    report_interval_s: float = Field(
        60.0,
        gt=0,
        description="A blocked source is logged at most once per interval per reason "
        "(the line fail2ban reads), with what was blocked since.",
    )

    @field_validator("exempt")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value.strip("[]"), strict=False)
            except ValueError:
                raise ValueError(
                    f"edge.exempt: {value!r} is not an IP address or network"
                ) from None
        return values
