"""A ``twisted.web`` Request whose body streams into an upload as it arrives.

Twisted's own Request spools every body to memory or ``/tmp`` and only then
dispatches it.  :class:`StorRequest` instead asks the site, when the headers
are in (``gotLength``), whether this request is an upload it wants; if so each
chunk goes to :class:`~stor.upload.Upload` (hashed, written to the chosen pair)
and nothing is buffered.  Any other body is dropped: no other route takes one.
"""

import io
import os
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from stor.ops.logs import emit_access
from stor.store.upload import Upload


class UploadStarter(Protocol):
    """What the site offers the request: an upload for this request line, or None."""

    def start_upload(
        self, method: bytes, path: bytes, headers: Headers, length: int | None,
        request: "StorRequest",
    ) -> Upload | None: ...

    def expect_continue(self, request: "StorRequest", segment: str) -> None: ...


class StorRequest(server.Request):
    """A request that hands its body to an :class:`Upload` chunk by chunk."""

    upload: Upload | None = None
    _body_started = False

    def process(self) -> None:
        if self.finished:  # answered early (Expect: 100-continue); the body was not wanted
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # stays empty: form parsing finds nothing to parse
        method, path = self._request_line()
        starter: UploadStarter | None = getattr(self.channel.site, "uploads", None)
        if starter is None or method is None or path is None:
            return
        self.upload = starter.start_upload(method, path, self.requestHeaders, length, self)
        if method == b"POST" and self._expects_continue():
            # Twisted would send "100 Continue" as soon as this returns; the app
            # decides instead, and may give the final answer without the body.
            self.requestHeaders.removeHeader(b"expect")
            self.method, self.uri = method, path
            self.path = path.split(b"?", 1)[0]
            self.clientproto = getattr(self.channel, "_version", b"HTTP/1.1")
            segment = self.path.lstrip(b"/").decode("latin-1")
            starter.expect_continue(self, segment)

    def _expects_continue(self) -> bool:
        expect = self.requestHeaders.getRawHeaders(b"expect", [b""])[0]
        return (expect.lower() == b"100-continue"
                and getattr(self.channel, "_version", None) == b"HTTP/1.1")

    def send_continue(self) -> None:
        """Tell the client to send the body (unless it has not waited to be told)."""
        if self._disconnected or self.finished or self._body_started or self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def answer_now(self, body: bytes) -> None:
        """Send the final answer before the body, then close: the body is never read."""
        if self._disconnected or self.finished:
            return
        if self.upload is not None:
            self.upload.abort()
        self.channel.persistent = False
        self.setHeader(b"connection", b"close")
        self.write(body)
        self.finish()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_started = True
        if self.upload is not None and not self.finished:
            self.upload.feed(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.upload is not None and not self.finished:
            self.upload.abort()
        super().connectionLost(reason)

    def pause_body(self) -> None:
        """Stop reading the body from the network (the disk is behind)."""
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_body(self) -> None:
        """Read the body again."""
        if self.transport is not None:
            self.transport.resumeProducing()

    def _request_line(self) -> tuple[bytes | None, bytes | None]:
        # The request line is known to the channel when the headers are in, but
        # twisted.web only copies it to the request once the body is complete.
        channel = self.channel
        return getattr(channel, "_command", None), getattr(channel, "_path", None)


_SHA_PATH = re.compile(r"/([0-9a-fA-F]{64})")
LOST = 499
"""Status recorded for a request whose connection was lost before its answer (nginx's)."""


class RequestObserver(Protocol):
    """Told when each request begins and ends (the Prometheus exporter)."""

    def request_started(self) -> None: ...

    def request_ended(self, method: str, status: int, sent: int, received: int,
                      seconds: float) -> None: ...


@dataclass
class _Begun:
    """What the site remembers of a request in flight."""

    started: float
    channel: Any
    peer: str


class StorSite(server.Site):
    """A Site whose requests stream uploads through ``uploads``.

    It also keeps the operator's view of the traffic: one access event per
    request (:func:`stor.logs.emit_access`, replacing twisted.web's combined
    log line) when its answer is finished or its connection lost, the
    ``observer`` told likewise, a ``Stor-Worker: <pid>`` header on every
    answer, and the requests and connections still open, for a graceful
    stop (:meth:`close_idle`).
    """

    requestFactory = StorRequest

    def __init__(self, resource: object, uploads: UploadStarter,
                 observer: RequestObserver | None = None, **kwargs: object) -> None:
        super().__init__(resource, **kwargs)
        self.uploads = uploads
        self.observer = observer
        self.in_flight: dict[server.Request, _Begun] = {}
        """Requests begun (request line received) and not yet ended."""
        self.connections: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.closing = False
        self._worker = [b"%d" % os.getpid()]

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.requestFactory = self._begin
        self.connections.add(channel)
        return channel

    def log(self, request: server.Request) -> None:
        """twisted.web's access line is replaced by the access event (see :meth:`_end`)."""

    def _begin(self, channel: Any, *args: Any) -> server.Request:
        request = self.requestFactory(channel, *args)
        peer = channel.transport.getPeer() if channel.transport is not None else None
        self.in_flight[request] = _Begun(time.monotonic(), channel, _peer(peer))
        request.responseHeaders.setRawHeaders(b"stor-worker", self._worker)
        if self.observer is not None:
            self.observer.request_started()
        request.notifyFinish().addBoth(self._end, request)
        return request

    def _end(self, result: object, request: server.Request) -> None:
        begun = self.in_flight.pop(request, None)
        if begun is None:
            return
        seconds = time.monotonic() - begun.started
        completed = not isinstance(result, Failure)
        method, path = request.method, request.path
        if path is None:  # ended before the body was in: the channel knows the request line
            method = getattr(begun.channel, "_command", None) or b"-"
            path = (getattr(begun.channel, "_path", None) or b"-").split(b"?", 1)[0]
        method_s = method.decode("latin-1") if isinstance(method, bytes) else str(method)
        path_s = path.decode("latin-1")
        status = request.code if completed or request.startedWriting else LOST
        upload = getattr(request, "upload", None)
        received = int(getattr(upload, "received", 0) or 0)
        sha = _SHA_PATH.fullmatch(path_s)
        agent = request.requestHeaders.getRawHeaders(b"user-agent", [b""])[0]
        emit_access(method=method_s, path=path_s, sha=sha.group(1).lower() if sha else None,
                    status=status, bytes_sent=request.sentLength, bytes_received=received,
                    duration_ms=round(seconds * 1000, 3), peer=begun.peer,
                    user_agent=agent.decode("latin-1"), completed=completed)
        if self.observer is not None:
            self.observer.request_ended(method_s, status, request.sentLength, received, seconds)

    def close_idle(self) -> int:
        """Stop keeping connections alive; close those with no request in flight.

        Called repeatedly while stopping.  A request in flight answers with
        ``Connection: close`` (when its headers are not sent yet) and its
        connection closes after it.  Returns the connections still open.
        """
        self.closing = True
        busy = set()
        for request, begun in list(self.in_flight.items()):
            busy.add(id(begun.channel))
            if begun.channel is not None:
                begun.channel.persistent = False
            if not request.startedWriting and not request.finished:
                request.setHeader(b"connection", b"close")
        still_open = 0
        for channel, transport in self._open_connections():
            still_open += 1
            if id(channel) not in busy:
                transport.loseConnection()
        return still_open

    def abort_all(self) -> int:
        """Cut every connection still open (the grace period is over); how many."""
        count = 0
        for _, transport in self._open_connections():
            transport.abortConnection()
            count += 1
        return count

    def _open_connections(self) -> list[tuple[Any, Any]]:
        """(HTTP channel, transport) of each connection not yet closed."""
        found = []
        for protocol in list(self.connections):
            channel = getattr(protocol, "_channel", protocol)  # twisted.web wraps the channel
            transport = getattr(channel, "transport", None)
            if transport is not None and not getattr(transport, "disconnected", False):
                found.append((channel, transport))
        return found


def _peer(address: Any) -> str:
    host = getattr(address, "host", None)
    if host is not None:
        return str(host)
    name = getattr(address, "name", None)
    if name is not None:
        return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return "-"
