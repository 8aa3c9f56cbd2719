"""sipfleet: a cacheless SIP server cluster."""

from sipfleet import native

__version__ = "0.1.0"

native.guard()  # before any compiled module is imported: a stale build must not run
