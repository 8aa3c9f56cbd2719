"""The only code that touches sockets: UDP, TCP (framing, connection table)."""
