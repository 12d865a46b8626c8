"""Conditional and partial GETs, as pure functions (RFC 9110 §13, §14).

A stored file never changes (its name is its hash), so its ETag is the SHA
itself and any matching validator means "you already have it".
"""

import re
from dataclasses import dataclass

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


class Unsatisfiable(Exception):
    """The Range asks only for bytes past the end of the file: 416."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable for {size} bytes")
        self.size = size


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
    past the end raises :class:`Unsatisfiable`.
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
        n = int(last_text)
        if n == 0 or size == 0:
            raise Unsatisfiable(size)
        return ByteRange(max(0, size - n), size - 1, size)
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise Unsatisfiable(size)
    return ByteRange(first, min(last, size - 1), size)
