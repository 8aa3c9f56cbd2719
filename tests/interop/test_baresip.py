"""baresip against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is its own baresip process with a config directory of its own, registering
through 127.0.0.1:5060 (UDP or TCP) inside the cluster's namespace; its SIP trace shows
what it sent and what arrived, so SDP is compared byte for byte end to end. The cases every
client runs are in tests/interop/phones.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop import phones
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.natlab import NatLab, natted_and_public_phones
from tests.interop.phones import *  # noqa: F403  (the cases every client runs)
from tests.interop.phones import test_register  # noqa: F401  (cases this module runs)

pytestmark = phones.client_marks(why_no_baresip())

AGENT = Baresip


@pytest.mark.netns
@pytest.mark.slow
def test_call_to_natted_phone_after_the_mapping_lifetime(natlab: NatLab, tmp_path: Path) -> None:
    """alice registers from behind the NAT and sends nothing more of her own; once the NAT
    has forgotten a flow as idle as hers, bob's call still reaches her (the LB's default
    keepalives are what kept her mapping)."""
    with phones.nat_cluster(natlab, tmp_path, "bnat") as public:
        rtp = phones.rtp_ports(Baresip)
        pair = natted_and_public_phones(
            natlab, public, Baresip, tmp_path, phones.DOMAIN, phones.PASSWORD, rtp
        )
        phones.natted_phone_is_called(natlab, public, *pair)
