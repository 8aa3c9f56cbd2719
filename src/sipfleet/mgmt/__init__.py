"""Management: HTTP API, status page, metrics (loopback by default)."""
