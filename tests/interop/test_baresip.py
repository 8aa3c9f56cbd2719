"""baresip against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is its own baresip process with a config directory of its own, registering
through 127.0.0.1:5060 (UDP or TCP) inside the cluster's namespace; its SIP trace shows
what it sent and what arrived, so SDP is compared byte for byte end to end. The cases every
client runs are in tests/interop/phones.py.
"""

from __future__ import annotations

from tests.interop import phones
from tests.interop.agents.baresip import Baresip, why_no_baresip
from tests.interop.phones import *  # noqa: F403  (the cases every client runs)
from tests.interop.phones import test_register  # noqa: F401  (cases this module runs)

pytestmark = phones.client_marks(why_no_baresip())

AGENT = Baresip
