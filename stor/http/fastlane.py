"""The fast lane: the simplest and by far the commonest request, answered at once.

A storage host mostly answers ``GET /<sha>`` (and ``HEAD``) for small files that
are read again and again.  When such a request arrives whole in one read —
request line and headers, nothing after them — with nothing that changes its
answer (no range, no validators, no body, no ``Connection`` other than
keep-alive, no fleet peer's ``Stor-Peer``), the store's read of it begins here
(the routes' :meth:`~stor.http.app.StorApp.read_nowait`); when the store
decided at once and the body is in memory (the path remembered in this
process, a small file in the page cache), the answer is written here, in one
piece, without building a twisted.web request.  Otherwise the request takes
the ordinary path, whose route goes on with the read begun here: the store is
entered once per request either way.  Everything an operator sees
is the same as on the ordinary path — the headers (built by the same
:func:`~stor.http.app.file_headers`), byte for byte and in the same order,
the access event, the statsite keys, the Prometheus figures — and
``tests/test_fastlane.py`` checks that.  Anything else goes the ordinary
way, untouched.
"""

import functools
import re
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.web.http import RESPONSES, datetimeToString

from stor.http.app import FileAnswer, HeaderList
from stor.core.peer import PEER_HEADER

REQUEST = re.compile(rb"(GET|HEAD) /([0-9a-fA-F]{64}) HTTP/1\.1\r\n"
                     rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n]*\r\n)*)\r\n")
"""One whole request, and nothing after it: header lines are ``token: value`` (a
folded or malformed line takes the ordinary path, which judges it)."""
MAX_SIZE = 8 * 1024
"""Requests longer than this take the ordinary path (and its limits)."""

_ORDINARY = frozenset({b"range", b"if-range", b"if-none-match", b"if-match",
                       b"if-modified-since", b"if-unmodified-since", b"content-length",
                       b"transfer-encoding", b"expect", b"upgrade", b"te", b"trailer",
                       PEER_HEADER})
"""Headers that change an answer (or announce a body; or a fleet peer asking for local
files only): their requests take the ordinary path."""

ReadNow = Callable[[object, bytes, str], "FileAnswer | None"]
"""(connection, method, SHA as requested) → the whole answer, or None (the read
goes on along the ordinary path): the routes' :meth:`~stor.http.app.StorApp.read_nowait`."""


@functools.lru_cache(maxsize=8)
def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, RESPONSES[status])


@functools.lru_cache(maxsize=4096)
def _render(headers: HeaderList) -> bytes:
    """A file answer's header lines and the blank line after them.  A hot file is
    asked for again and again with the same headers: rendered once (measured: this
    and the call around it cost the fast lane about as much as the rest of it)."""
    return b"".join(b"%s: %s\r\n" % header for header in headers) + b"\r\n"


class Accounting(Protocol):
    """What the fast lane tells the site (:class:`~stor.http.site.StorSite`)."""

    worker: bytes
    """This process's pid, for the ``Stor-Worker`` header."""

    server_header: bytes
    """The ``Server`` header's value."""

    @property
    def closing(self) -> bool: ...

    def started(self) -> None: ...

    def client(self, peer: str, forwarded: Sequence[bytes] | None) -> str: ...

    def account(self, method: str, path: bytes, status: int, sent: int, received: int,
                seconds: float, peer: str, agent: bytes, completed: bool) -> None: ...


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...


class Peer(Protocol):
    """The connection a request came on (:class:`~stor.http.channel.StorChannel`)."""

    peer_name: str

    @property
    def transport(self) -> Writable: ...


class FastLane:
    """Answers what it can of ``data`` (one read of a connection); see the module docstring.

    ``read_nowait`` is the routes' (the only way to the store), ``site`` does the
    accounting.
    """

    def __init__(self, read_nowait: ReadNow, handed_on: Callable[[], None],
                 site: Accounting) -> None:
        self._read_nowait = read_nowait
        self.handed_on = handed_on
        """Called by the connection once the ordinary path had a request this lane began
        (the routes' :meth:`~stor.http.app.StorApp.drop_begun`: a read not taken is let go)."""
        self._site = site
        self._worker = b"Stor-Worker: " + site.worker + b"\r\n"
        self._server = b"Server: " + site.server_header + b"\r\n"
        self._second = -1
        self._date = b""

    def __call__(self, channel: Peer, data: bytes) -> bool:
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

    def _answer(self, channel: Peer, method: bytes, segment: bytes, agent: bytes,
                forwarded: list[bytes]) -> bool:
        start = time.monotonic()
        answer = self._read_nowait(channel, method, segment.decode("ascii"))
        if answer is None:
            return False
        self._site.started()
        channel.transport.write(b"".join((
            _status_line(answer.status), self._worker, self._server,
            b"Date: ", self._now(), b"\r\n", _render(answer.headers), answer.body)))
        self._site.account(method.decode("ascii"), b"/" + segment, answer.status,
                           len(answer.body), 0, time.monotonic() - start, self._site.client(channel.peer_name, forwarded),
                           agent, True)
        return True

    def _now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second, self._date = second, datetimeToString(second)
        return self._date
