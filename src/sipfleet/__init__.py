"""sipfleet: a cacheless SIP server cluster."""

__version__ = "0.1.0"
