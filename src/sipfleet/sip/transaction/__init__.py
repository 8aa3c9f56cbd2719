"""RFC 3261 §17 transactions (with RFC 6026) as sans-IO state machines."""
