"""Conditional and partial reads, as pure rules (RFC 9110 §13, §14).

A stored file never changes (its name is its hash), so its ETag is the SHA
itself and any matching validator means "you already have it".  The HTTP
layer turns request headers into a :class:`Selection`; the store, once it
knows a file's size, asks it which :class:`Part` to send.
"""

import re
from dataclasses import dataclass

from stor.core.errors import RangeNotSatisfiable

_RANGE = re.compile(rb"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*")


@dataclass(frozen=True)
class ByteRange:
    """The inclusive byte range ``first``..``last`` of a file of ``size`` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def content_range(self) -> bytes:
        return b"bytes %d-%d/%d" % (self.first, self.last, self.size)


@dataclass(frozen=True)
class Part:
    """What to answer for a file: 200 (whole), 206 (``range``) or 304 (nothing)."""

    status: int
    range: ByteRange | None = None

    @property
    def whole(self) -> bool:
        """The complete file is sent: the only answer whose bytes can be verified."""
        return self.status == 200

    def length(self, size: int) -> int:
        """The body length of this answer for a file of ``size`` bytes."""
        if self.range is not None:
            return self.range.length
        return 0 if self.status == 304 else size


WHOLE = Part(200)
NOT_MODIFIED = Part(304)


@dataclass(frozen=True)
class Selection:
    """What a GET or HEAD asks for, from its headers; applied once the size is known."""

    sha: str
    head: bool = False
    if_none_match: bytes | None = None
    range: bytes | None = None
    if_range: bytes | None = None

    @property
    def plain(self) -> bool:
        """A plain GET: the whole body whatever the size (no validator, no range)."""
        return not self.head and self.if_none_match is None and self.range is None

    def part(self, size: int) -> Part:
        """The part to answer for a file of ``size`` bytes; raises
        :class:`~stor.core.errors.RangeNotSatisfiable` for a range past the end."""
        if none_match(self.if_none_match, self.sha):
            return NOT_MODIFIED
        wanted = parse_range(self.range, size, self.if_range, self.sha)
        return WHOLE if wanted is None else Part(206, wanted)


def etag(sha: str) -> bytes:
    """The strong validator of ``sha``'s file."""
    return b'"%s"' % sha.lower().encode()


def none_match(header: bytes | None, sha: str) -> bool:
    """Whether an ``If-None-Match`` header matches the file (then the answer is 304)."""
    if header is None:
        return False
    wanted = etag(sha)
    for tag in header.split(b","):
        tag = tag.strip()
        if tag == b"*" or tag.removeprefix(b"W/") == wanted:
            return True
    return False


def parse_range(header: bytes | None, size: int, if_range: bytes | None, sha: str) -> ByteRange | None:
    """The single byte range a GET asks for, or None to send the whole file.

    Several ranges, a malformed header or an ``If-Range`` that is not our ETag
    mean the whole file (a server may always ignore Range).  A range starting
    past the end raises :class:`~stor.core.errors.RangeNotSatisfiable`.
    """
    if header is None or (if_range is not None and if_range.strip() != etag(sha)):
        return None
    m = _RANGE.fullmatch(header)
    if m is None:
        return None
    first_text, last_text = m.groups()
    if not first_text:  # suffix: the last N bytes
        if not last_text:
            return None
        n = _position(last_text)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(size)
        return ByteRange(max(0, size - n), size - 1, size)
    first = _position(first_text)
    last = _position(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(size)
    return ByteRange(first, min(last, size - 1), size)


_HUGE = 10**18
"""Past any file's size: a position with more digits means "beyond the end"."""


def _position(digits: bytes) -> int:
    """A byte position of a Range header; an absurdly long one (Python refuses to read
    over 4,300 digits, and no file is 10^18 bytes) counts as :data:`_HUGE`, so that it
    is answered as any position past the end: ignored, clamped or 416, never a 500."""
    digits = digits.lstrip(b"0") or b"0"
    return int(digits) if len(digits) <= 18 else _HUGE
