"""Media relay control: rtpengine's ng protocol (bencode over UDP), the relays of a cluster."""
