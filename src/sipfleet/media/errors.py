"""The errors of the media package, from the bytes on the wire up to the relay pool."""

from __future__ import annotations


class NgError(ValueError):
    """Bytes that are not a well-formed ng message (bencode, or the dictionary's shape)."""


class BencodeError(NgError):
    """Bytes that are not one well-formed bencoded value."""


class MediaRelayError(Exception):
    """A command to a media relay failed: it timed out, rtpengine answered with an error,
    the reply was malformed, or too many commands are in flight. The message names the
    relay and the reason."""
