"""HTTP dates of files, formatted once: a file is read many times, its mtime never changes."""

import functools

from twisted.web.http import datetimeToString


@functools.lru_cache(maxsize=4096)
def http_date(seconds: int) -> bytes:
    """``seconds`` since the epoch as an HTTP date (``Last-Modified``)."""
    return datetimeToString(seconds)
