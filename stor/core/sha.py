"""The SHA grammar: what a file's name looks like, in one place.

A stored file is named by the SHA-256 of its content: 64 hex digits, any case,
normalised to lower case before use.  Anything else is *malformed*.
"""

import re

from stor.core.errors import MalformedSha

SHA_HEX = re.compile(r"[0-9a-fA-F]{64}")
"""A SHA as text, any case (match with ``fullmatch``)."""

SHA_PATH = re.compile(rb"/[0-9a-fA-F]{64}")
"""A request path that is exactly ``/<sha>`` (match with ``fullmatch``)."""


def parse_sha(segment: str) -> str:
    """The normalised (lower-case) SHA, or :class:`MalformedSha`."""
    if not SHA_HEX.fullmatch(segment):
        raise MalformedSha(segment)
    return segment.lower()


def is_sha(text: str) -> bool:
    """Whether ``text`` is a well-formed SHA."""
    return SHA_HEX.fullmatch(text) is not None


def sha_of_path(path: bytes) -> str | None:
    """The SHA a request path ``/<sha>`` names (lower case), else None."""
    if len(path) != 65 or not SHA_PATH.fullmatch(path):
        return None
    return path[1:].decode("ascii").lower()
