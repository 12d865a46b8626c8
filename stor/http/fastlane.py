"""The fast lane: the simplest and by far the commonest request, answered at once.

A storage host mostly answers ``GET /<sha>`` (and ``HEAD``) for small files that
are read again and again.  When such a request arrives whole in one read —
request line and headers, nothing after them — with nothing that changes its
answer (no range, no validators, no body, no ``Connection`` other than
keep-alive), and the store can answer it without waiting
(:meth:`~stor.store.store.Store.read_now`: the path remembered in this
process, the file in the page cache), the answer is written here, in one
piece, without building a twisted.web request.  Everything an operator sees
is the same as on the ordinary path — the headers, byte for byte and in the
same order, the access event, the statsite keys, the Prometheus figures —
and ``tests/test_fastlane.py`` checks that.  Anything else goes the ordinary
way, untouched.
"""

import re
import time
from typing import Any

from twisted.web.http import datetimeToString
from twisted.web.server import version as SERVER

from stor.core.ranges import Selection, etag
from stor.core.sha import parse_sha
from stor.http.dates import http_date

REQUEST = re.compile(rb"(GET|HEAD) /([0-9a-fA-F]{64}) HTTP/1\.1\r\n"
                     rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*)\r\n")
"""One whole request, and nothing after it: header lines are ``token: value`` (a
folded or malformed line takes the ordinary path, which judges it)."""
MAX_SIZE = 8 * 1024
"""Requests longer than this take the ordinary path (and its limits)."""

_ORDINARY = frozenset({b"range", b"if-range", b"if-none-match", b"if-match",
                       b"if-modified-since", b"if-unmodified-since", b"content-length",
                       b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer"})
"""Headers that change an answer (or announce a body): their requests take the ordinary path."""

IMMUTABLE = b"public, max-age=31536000, immutable"


class FastLane:
    """Answers what it can of ``data`` (one read of a connection); see the module docstring.

    ``app`` is the :class:`~stor.http.app.StorApp` (its store and metrics),
    ``site`` the :class:`~stor.http.site.StorSite` (accounting, the worker pid).
    """

    def __init__(self, app: Any, site: Any) -> None:
        self._app = app
        self._site = site
        self._worker = b"Stor-Worker: " + site.worker + b"\r\n"
        self._server = b"Server: " + SERVER + b"\r\n"
        self._second = -1
        self._date = b""

    def __call__(self, channel: Any, data: bytes) -> bool:
        """True when ``data`` was answered here (the connection stays open)."""
        if len(data) > MAX_SIZE or self._site.closing:
            return False
        match = REQUEST.fullmatch(data)
        if match is None:
            return False
        agent = b""
        forwarded: list[bytes] = []
        for line in match.group(3).split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name in _ORDINARY or (name == b"connection" and value.strip().lower() != b"keep-alive"):
                return False
            if name == b"user-agent":
                agent = value.strip()
            elif name == b"x-forwarded-for":
                forwarded.append(value.strip())
        return self._answer(channel, match.group(1), match.group(2), agent, forwarded)

    def _answer(self, channel: Any, method: bytes, segment: bytes, agent: bytes,
                forwarded: list[bytes]) -> bool:
        start = time.monotonic()
        text = segment.decode("ascii")
        head = method == b"HEAD"
        reading = self._app.store.read_now(Selection(parse_sha(text), head=head), text)
        if reading is None:
            return False
        self._site.started()
        self._app.metrics.incr("request.get.count")
        collected: list[bytes] = []
        reading.send(_Collect(collected))
        body = b"".join(collected)
        modified = reading.last_modified
        channel.transport.write(b"".join((
            b"HTTP/1.1 200 OK\r\n", self._worker, self._server,
            b"Date: ", self._now(), b"\r\n",
            b"Last-Modified: ", modified if isinstance(modified, bytes)
            else http_date(int(modified)), b"\r\n",
            b"ETag: ", etag(text), b"\r\n",
            b"Accept-Ranges: bytes\r\nCache-Control: ", IMMUTABLE, b"\r\n",
            b"Content-Type: application/octet-stream\r\n",
            b"Content-Length: %d\r\n\r\n" % reading.size, body)))
        path = b"/" + segment
        self._site.account(method.decode("ascii"), path, 200, len(body), 0,
                           time.monotonic() - start,
                           self._site.client(channel.peer_name, forwarded), agent, True)
        return True

    def _now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second, self._date = second, datetimeToString(second)
        return self._date


class _Collect:
    """The body of a small file, as the store writes it to a consumer."""

    def __init__(self, into: list[bytes]) -> None:
        self._into = into

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._into.append(data)
