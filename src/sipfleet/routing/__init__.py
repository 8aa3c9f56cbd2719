"""The operator-scriptable routing policy: typed API, default policy, LCR, NAT."""
