"""PJSIP (pjsua2) against `sipfleet up` as users start it (no config file, phones on the LB).

Each phone is a pjsua2 program of its own in the cluster's namespace (null sound device),
registering through 127.0.0.1:5060; every SIP message it sends or receives is reported,
so SDP is compared byte for byte end to end. Calls go to and from a baresip phone too. The
cases every client runs are in tests/interop/phones.py.
"""

from __future__ import annotations

from tests.interop import phones
from tests.interop.agents.pjsua import Pjsua, why_no_pjsua
from tests.interop.phones import *  # noqa: F403  (the cases every client runs)
from tests.interop.phones import test_call_to_baresip_and_back, test_register  # noqa: F401

pytestmark = phones.client_marks(why_no_pjsua())

AGENT = Pjsua
