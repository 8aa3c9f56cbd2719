"""Media relay control: rtpengine's ng protocol (bencode over UDP), the relays of a cluster.

``bencode`` and ``ng`` are sans-IO; ``client.MediaRelays`` is the asyncio shell; docs/media.md.
"""

from sipfleet.media.client import MediaRelays
from sipfleet.media.errors import BencodeError, MediaRelayError, NgError
from sipfleet.media.relays import RelayAddress, parse_relays

__all__ = [
    "BencodeError",
    "MediaRelayError",
    "MediaRelays",
    "NgError",
    "RelayAddress",
    "parse_relays",
]
