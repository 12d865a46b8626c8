"""The one adapter over twisted.web's private channel state, and the limits on requests.

twisted.web copies the request line to the :class:`~twisted.web.server.Request`
only once the whole body is in, sends ``100 Continue`` by itself as soon as
the headers are parsed, answers any malformed or over-long header with an
empty ``400``, and lets a client take hours to send its headers.  stor needs
the request line when the headers are in (to stream the body into an
upload), decides ``Expect: 100-continue`` itself, and limits what a client
may hold.  Everything that touches twisted.web's private attributes
(``_command``, ``_path``, ``_version``, ``requests``) is in this module, and
``tests/test_channel.py`` fails loudly if they change.

Limits (counted through the site's :meth:`~stor.http.site.StorSite.rejected`):

- ``header_timeout``: the request line and headers must be in within this
  many seconds of the connection opening (or of the previous answer, for a
  kept-alive connection); else ``408`` (or, on an idle connection, just close).
- a request line over :data:`MAX_REQUEST_LINE` bytes: ``414``; headers over
  :data:`MAX_HEADER_BYTES` in all (or one line over that): ``431``.
- a ``Content-Length`` or chunk size that is not a number below 2^63: ``400``
  with the reason (twisted answered an empty ``400`` or waited for the body).
- ``body_timeout``: an upload body that stops arriving for this long is cut
  (twisted's idle timeout, suspended while stor itself holds the body back).
"""

from typing import Any

import os
import socket

from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from stor.core.reactor import Connection

MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
READ_SIZE = 256 * 1024
"""Bytes asked of the socket per read (twisted's default is 64 KiB): an upload body
then costs the reactor a quarter of the turns per MiB.  It is also the most the
transport buffers before pausing a producer."""

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long",
            431: b"Request Header Fields Too Large"}

LENGTH_LIMIT = 2 ** 63
"""A ``Content-Length`` or chunk size must be a number below this (a file offset)."""


class _BoundedChunks(http._ChunkedTransferDecoder):
    """twisted's chunked decoder, refusing a chunk size no file could have."""

    reason = "malformed chunked body"

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done = super()._dataReceived_CHUNK_LENGTH()
        if done and self.length >= LENGTH_LIMIT:
            self.reason = "chunk size is not a number below 2^63"
            raise http._MalformedChunkedDataError(self.reason)
        return done


def _length_problem(data: bytes) -> str | None:
    """Why a ``Content-Length`` value is refused (None: it is a usable length)."""
    if not data.isdigit() or len(data) > 19 or int(data) >= LENGTH_LIMIT:
        return "Content-Length is not a number below 2^63"
    return None


def request_line(channel: Any) -> tuple[bytes, bytes, bytes] | None:
    """(method, path with query, version) of the request whose headers are being read."""
    try:
        return channel._command, channel._path, channel._version
    except AttributeError:
        return None


def is_gone(request: Any) -> bool:
    """Whether the client of ``request`` went away (twisted drops the channel then)."""
    return request.channel is None


class StorChannel(http.HTTPChannel):
    """An HTTP/1.1 channel with header deadlines, 414/431, and ``Expect`` left to the request."""

    transport: Connection  # set by makeConnection before any other call
    site: Any  # the StorSite that built this channel (server.Site.buildProtocol sets it)

    header_timeout: float | None = 30.0
    MAX_LENGTH = MAX_HEADER_BYTES
    totalHeadersSize = MAX_HEADER_BYTES + MAX_REQUEST_LINE + 4
    _deadline: IDelayedCall | None = None
    _awaiting_line = True
    _header_bytes = 0
    _started = False  # any byte of the current request seen

    peer_name = "-"
    """The client's address as the access log shows it (read once a connection)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        if hasattr(self.transport, "bufferSize"):
            self.transport.bufferSize = READ_SIZE
        self.peer_name = describe_peer(self.transport.getPeer())
        self._arm_deadline()

    fast_lane: Any = None
    """Offered each read that starts a request (:mod:`stor.http.fastlane`)."""

    _receiving = False
    _refused = False
    """Answered and closing (:meth:`_refuse`): whatever else arrives is dropped."""

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        # Only a read from the network, between requests, can be a whole request on
        # its own; twisted also calls this with pipelined bytes it had held back.
        lane = self.fast_lane
        if not (self._awaiting_line and not self._started and not self._receiving):
            lane = None
        if lane is not None and lane(self, data):
            self.resetTimeout()
            self._arm_deadline()  # the next request's headers are due from now
            return
        self._started = True
        receiving, self._receiving = self._receiving, True
        try:
            super().dataReceived(data)  # a read the lane began is taken on by the routes
        finally:
            self._receiving = receiving
            if lane is not None:
                lane.handed_on()

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_line:
            if not line:  # tolerated blank line before a request
                return super().lineReceived(line)
            if len(line) > MAX_REQUEST_LINE:
                return self._refuse(414, "request_line_too_long")
            self._awaiting_line = False
            self._header_bytes = 0
        else:
            self._header_bytes += len(line) + 2
            if self._header_bytes > MAX_HEADER_BYTES:
                return self._refuse(431, "headers_too_large")
        return super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._awaiting_line:
            self._refuse(414, "request_line_too_long")
        else:
            self._refuse(431, "headers_too_large")

    _bad_reason = "malformed request"

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        """twisted's, with three more refusals, each a 400 with a text reason:

        - a ``Content-Length`` that is not a number below 2^63 (twisted waited
          for a body of 10^26 bytes), and chunk sizes bounded the same way;
        - a ``Transfer-Encoding`` other than exactly ``chunked``: twisted takes
          ``chunked`` then a second header ``identity`` as chunked, where RFC
          9112 §6.1 makes a request whose last coding is not chunked a 400 (a
          balancer in front reading the other way is a desync: request
          smuggling).  A repeated ``chunked`` or one after ``Content-Length``
          fails in twisted already.
        """
        if header == b"Content-Length" and (problem := _length_problem(data)) is not None:
            self._bad_reason = problem
            return self._failChooseTransferDecoder()
        if header == b"Transfer-Encoding" and data.lower() != b"chunked":
            self._bad_reason = "a Transfer-Encoding other than chunked"
            return bool(self._failChooseTransferDecoder())
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is http._ChunkedTransferDecoder:
            self._transferDecoder = _BoundedChunks(decoder.dataCallback, decoder.finishCallback)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        """twisted's bare ``400``, with the reason in its body."""
        reason = getattr(self._transferDecoder, "reason", None) or self._bad_reason
        self._refuse(400, "bad_request", reason)

    def allHeadersReceived(self) -> None:
        """twisted's, without its automatic ``100 Continue`` (the request decides)."""
        self._disarm_deadline()
        request = self.requests[-1]
        request.parseCookies()
        self.persistent = self.checkPersistence(request, self._version)
        request.gotLength(self.length)

    def requestDone(self, request: Any) -> None:
        if self.persistent:  # before twisted replays pipelined bytes into lineReceived
            self._awaiting_line = True
            self._started = False
            self._arm_deadline()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm_deadline()
        super().connectionLost(reason)

    def timeoutConnection(self) -> None:
        """The body stopped arriving (twisted's idle timeout)."""
        site = getattr(self, "site", None)
        if site is not None and not self._awaiting_line:
            site.rejected("body_timeout", self.transport)
        super().timeoutConnection()

    def send_continue(self) -> None:
        """``100 Continue``: the client may send the body now."""
        if self.transport is not None and not self.transport.disconnecting:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- deadlines and refusals --------------------------------------------

    def _arm_deadline(self) -> None:
        """The next request's headers are due ``header_timeout`` from now.  An armed
        deadline is moved rather than replaced: on a keep-alive connection this runs
        once per request, and a cancelled call stays in the reactor's heap until it
        is rebuilt (measured: 9 % of a fast-lane GET's CPU)."""
        if not self.header_timeout:
            self._disarm_deadline()
        elif self._deadline is not None and self._deadline.active():
            self._deadline.reset(self.header_timeout)
        else:
            self._deadline = self.callLater(self.header_timeout, self._headers_late)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self._started:
            self._refuse(408, "header_timeout")
        elif self.transport is not None:
            self.transport.loseConnection()  # an idle kept-alive connection: just close it

    def _refuse(self, status: int, kind: str, why: str | None = None) -> None:
        """Answer ``status`` without a request object, and close."""
        self._disarm_deadline()
        site = getattr(self, "site", None)
        if site is not None:
            site.rejected(kind, self.transport)
        body = b"%d %s%s\n" % (status, _REASONS[status],
                               b": " + why.encode() if why else b"")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, _REASONS[status], len(body), body))
        self._refused = True  # whatever else arrives is dropped
        self.setTimeout(None)
        self.transport.loseConnection()


@implementer(IPushProducer)
class BodyProducer:
    """The connection, as the producer of an upload body: paused when the disk is behind.

    While stor holds the body back, the body idle timeout is suspended: the
    client is not the one being slow.
    """

    def __init__(self, channel: StorChannel) -> None:
        self._channel = channel
        self._saved_timeout: float | None = None
        self._paused = False
        self._complete = False

    def complete(self) -> None:
        """The whole body is in: twisted manages the timeout from here on."""
        self._complete = True
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._paused and not self._complete and self._channel.transport is not None:
            self._paused = True
            self._saved_timeout = self._channel.setTimeout(None)
            self._channel.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused and self._channel.transport is not None:
            self._paused = False
            self._channel.transport.resumeProducing()
            if not self._complete:
                self._channel.setTimeout(self._saved_timeout)

    def stopProducing(self) -> None:
        pass


def describe_peer(address: Any) -> str:
    """An address as the access log shows it: the host, or a unix socket's path."""
    host = getattr(address, "host", None)
    if host is not None:
        return str(host)
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return "-"


class SocketSendfile:
    """A request's connection as a target for ``os.sendfile``: plain TCP only.

    Twisted has no API for it, so this is the one place that steps around the
    transport: the answer's headers go through twisted.web as usual; once the
    transport's buffer is empty the kernel sends the file straight to the
    socket; when the socket is full (``EAGAIN``) the transport is asked to
    wake the producer when it is writable again (``producerPaused`` and
    ``startWriting``: the transport then resumes its producer, the channel,
    which resumes the request's producer).  ``tests/test_channel.py`` checks
    these hold.
    """

    def __init__(self, request: Any, transport: Any, sock: socket.socket) -> None:
        self._request = request
        self._transport = transport
        self._fd = sock.fileno()

    @classmethod
    def of(cls, request: Any) -> "SocketSendfile | None":
        """The target for ``request``, or None (TLS, a unix socket, a test transport)."""
        transport = getattr(request.channel, "transport", None)
        if transport is None or ISSLTransport.providedBy(transport):
            return None
        get_handle = getattr(transport, "getHandle", None)
        sock = get_handle() if get_handle is not None else None
        if not isinstance(sock, socket.socket) or sock.family not in (socket.AF_INET,
                                                                        socket.AF_INET6):
            return None
        if not all(hasattr(transport, a) for a in ("producerPaused", "startWriting", "dataBuffer",
                                                   "offset", "_tempDataLen")):
            return None
        return cls(request, transport, sock)

    def begin(self, producer: IPushProducer) -> None:
        self._request.registerProducer(producer, True)
        self._request.write(b"")  # the headers, through twisted.web
        self.wait_writable()

    def send(self, fd: int, offset: int, count: int) -> int | None:
        if self._buffered():
            self.wait_writable()  # what twisted holds goes first, or the stream is garbled
            return None
        try:
            n = os.sendfile(self._fd, fd, offset, count)
        except BlockingIOError:
            self.wait_writable()
            return None
        self._request.sentLength += n
        return n

    def _buffered(self) -> int:
        """Bytes twisted's transport still holds for this socket (``abstract.FileDescriptor``)."""
        t = self._transport
        return len(t.dataBuffer) - t.offset + t._tempDataLen

    def wait_writable(self) -> None:
        """Have the producer resumed once the transport's buffer is out and the socket
        takes more."""
        self._transport.producerPaused = True
        self._transport.startWriting()

    def end(self) -> None:
        if self._request.channel is not None:
            self._request.unregisterProducer()
