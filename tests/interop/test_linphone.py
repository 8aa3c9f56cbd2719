"""Linphone's console client (linphonec) against `sipfleet up` as users start it (no config
file, phones on the LB).

Each phone is its own linphonec process with a home directory and linphonerc of its own,
registering through 127.0.0.1:5060 (UDP or TCP) inside the cluster's namespace; belle-sip's
log shows every SIP message it sent and received, so SDP is compared byte for byte end to
end. The namespace gets a default route through a veth pair of its own (see
``give_default_route``): without a non-loopback address liblinphone takes the network for
down after 5 s and closes its transports. Calls go to and from a baresip phone too. The
cases every client runs are in tests/interop/phones.py.
"""

from __future__ import annotations

import pytest

from tests.interop import phones
from tests.interop.agents.linphone import Linphone, why_no_linphone
from tests.interop.lab import Embedded
from tests.interop.phones import *  # noqa: F403  (the cases every client runs)
from tests.interop.phones import test_call_to_baresip_and_back  # noqa: F401  (cases this module runs)

pytestmark = phones.client_marks(why_no_linphone())

AGENT = Linphone


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register(phone_cluster: Embedded, phone: phones.Phone, transport: str) -> None:
    contact = phones.registered_contact(phone_cluster, phone("alice", transport=transport))
    assert f"transport={transport}" in contact
