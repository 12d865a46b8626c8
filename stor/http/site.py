"""The site: connections, the operator's view of each request, and a graceful stop.

:class:`StorSite` serves the routes (:class:`~stor.http.app.StorApp`) over
:class:`~stor.http.channel.StorChannel` connections whose requests are
:class:`~stor.http.request.StorRequest` (an upload's body streams into the
intake the routes give it), and offers each connection's reads to the fast
lane first (:mod:`stor.http.fastlane`, also the routes').  It emits one
access event per request (``access``: given by the process, which owns the
log) when its answer is finished or its connection lost, tells the
``observer`` (the Prometheus exporter) likewise,
puts a ``Stor-Worker: <pid>`` header on every answer, counts requests the
channel refused (408, 414, 431, body timeouts), and keeps the requests and
connections still open, for a graceful stop (:meth:`close_idle`).
"""

import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

from stor.core.metrics import Metrics, NullMetrics
from stor.core.sha import sha_of_path
from stor.http.channel import StorChannel, describe_peer, request_line
from stor.http.app import FileAnswer
from stor.http.fastlane import FastLane
from stor.http.handshake import Intake
from stor.http.forwarded import Network, client_of
from stor.http.request import StorRequest

log = Logger()

LOST = 499
"""Status recorded for a request whose connection was lost before its answer (nginx's)."""


AccessEvent = Callable[[str, str, "str | None", int, int, int, float, str, str, bool], None]
"""(method, path, SHA, status, bytes sent, bytes received, milliseconds, peer,
user agent, completed): :func:`stor.observe.access.emit_access`."""


class Routes(Protocol):
    """What the site serves (:class:`~stor.http.app.StorApp`): its resource, the intake
    of a request's body (:data:`~stor.http.request.OpenIntake`) and the fast lane's read
    (:data:`~stor.http.fastlane.ReadNow`)."""

    def resource(self) -> Resource: ...

    def intake(self, method: bytes, target: bytes, headers: Headers,
               length: int | None) -> Intake | None: ...

    def read_nowait(self, channel: object, method: bytes, segment: str) -> FileAnswer | None: ...

    def drop_begun(self) -> None: ...


class Closing:
    """Whether this process has begun its graceful stop: set by the site
    (:meth:`StorSite.close_idle`), read by the routes (``/health/ready`` says
    ``stopping``).  Made before both, so neither needs the other."""

    def __init__(self) -> None:
        self.begun = False

    def __call__(self) -> bool:
        return self.begun


class RequestObserver(Protocol):
    """Told when each request begins and ends, and of refused ones (the Prometheus exporter)."""

    def request_started(self) -> None: ...

    def request_ended(self, method: str, status: int, sent: int, received: int,
                      seconds: float) -> None: ...

    def request_rejected(self, reason: str) -> None: ...


@dataclass
class _Begun:
    """What the site remembers of a request in flight."""

    started: float
    channel: Any
    peer: str


class StorSite(server.Site):
    """The HTTP site of one stor process; see the module docstring."""

    requestFactory = StorRequest
    protocol: Callable[[], Any] = StorChannel
    """HTTP/1.1 only: the channel itself, not twisted's h2-negotiating wrapper (so the
    factory's typing, which names that wrapper, sees it as any protocol)."""

    def __init__(self, routes: Routes, *, access: AccessEvent | None = None,
                 closing: Closing | None = None, observer: RequestObserver | None = None,
                 metrics: Metrics | None = None, header_timeout: float | None = 30.0,
                 body_timeout: float = 120.0, server_header: bytes = b"stor",
                 trusted_proxies: Sequence[Network] = (),
                 **kwargs: Any) -> None:
        super().__init__(routes.resource(), timeout=body_timeout, **kwargs)
        self.server_header = server_header
        """Every answer's ``Server`` header (config ``server_header``; twisted's names its
        version, which tells a stranger what to look up)."""
        self._open_intake = routes.intake
        self._access = access
        self._closing = closing or Closing()
        self.trusted_proxies = tuple(trusted_proxies)
        """Balancers whose ``X-Forwarded-For`` names the client (:mod:`stor.http.forwarded`)."""
        self.observer = observer
        self.metrics: Metrics = metrics or NullMetrics()
        self.header_timeout = header_timeout
        self.in_flight: dict[server.Request, _Begun] = {}
        """Requests begun (request line received) and not yet ended."""
        self.connections: "weakref.WeakSet[StorChannel]" = weakref.WeakSet()
        self.worker = b"%d" % os.getpid()
        """This process's pid, as every answer's ``Stor-Worker`` header says."""
        self._worker = [self.worker]
        self.fast_lane = FastLane(routes.read_nowait, routes.drop_begun, self)
        """Called with each connection's reads first (:mod:`stor.http.fastlane`)."""

    @property
    def closing(self) -> bool:
        """Whether the graceful stop has begun (no new keep-alive, no fast lane)."""
        return self._closing.begun

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        channel.fast_lane = self.fast_lane
        channel.requestFactory = self._begin
        self.connections.add(channel)
        return channel

    def log(self, request: http.Request) -> None:
        """twisted.web's access line is replaced by the access event (see :meth:`_end`)."""

    def rejected(self, reason: str, transport: Any) -> None:
        """The channel refused a request (or cut its body): count it and say so once."""
        self.metrics.incr(f"error.request.{reason}.count")
        if self.observer is not None:
            self.observer.request_rejected(reason)
        peer = describe_peer(transport.getPeer()) if transport is not None else "-"
        log.info("refused a request from {peer}: {reason}", peer=peer, reason=reason)

    def _begin(self, channel: Any, *args: Any) -> server.Request:
        request = StorRequest(channel, *args)
        self.in_flight[request] = _Begun(time.monotonic(), channel, channel.peer_name)
        request.responseHeaders.setRawHeaders(b"stor-worker", self._worker)
        request.site_ended = self.ended  # told by the request itself: no Deferred a request
        request.open_intake = self._open_intake
        if self.observer is not None:
            self.observer.request_started()
        return request

    def started(self) -> None:
        """A request begins that the fast lane answers at once."""
        if self.observer is not None:
            self.observer.request_started()

    def ended(self, request: server.Request, completed: bool) -> None:
        """``request`` is answered (or its connection lost): account for it once."""
        begun = self.in_flight.pop(request, None)
        if begun is None:
            return
        seconds = time.monotonic() - begun.started
        completed = completed and not getattr(request, "abandoned", False)
        method, path = request.method, request.path
        if path is None:  # ended before the body was in: the channel knows the request line
            line = request_line(begun.channel)
            method, path = (line[0], line[1].split(b"?", 1)[0]) if line else (b"-", b"-")
        status = request.code if completed or request.startedWriting else LOST
        intake = request.intake if isinstance(request, StorRequest) else None
        agent = request.requestHeaders.getRawHeaders(b"user-agent")
        peer = self.client(begun.peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for"))
        self.account(method.decode("latin-1") if isinstance(method, bytes) else str(method),
                     path, status, request.sentLength, intake.received if intake else 0,
                     seconds, peer, agent[0] if agent else b"", completed)

    def client(self, peer: str, forwarded: Sequence[bytes] | None) -> str:
        """The client as logs name it: ``peer``, or whom a trusted balancer forwarded."""
        return client_of(peer, forwarded, self.trusted_proxies)

    def account(self, method: str, path: bytes, status: int, sent: int, received: int,
                seconds: float, peer: str, agent: bytes, completed: bool) -> None:
        """The access event and the observer's figures of one request."""
        if self._access is not None:
            self._access(method, path.decode("latin-1"), sha_of_path(path), status, sent,
                         received, round(seconds * 1000, 3), peer, agent.decode("latin-1"),
                         completed)
        if self.observer is not None:
            self.observer.request_ended(method, status, sent, received, seconds)

    def close_idle(self) -> int:
        """Stop keeping connections alive; close those with no request in flight.

        Called repeatedly while stopping.  A request in flight answers with
        ``Connection: close`` (when its headers are not sent yet) and its
        connection closes after it.  Returns the connections still open.
        """
        self._closing.begun = True
        busy = set()
        for request, begun in list(self.in_flight.items()):
            busy.add(id(begun.channel))
            if begun.channel is not None:
                begun.channel.persistent = False
            if not request.startedWriting and not request.finished:
                request.setHeader(b"connection", b"close")
        still_open = 0
        for channel in self._open_connections():
            still_open += 1
            if id(channel) not in busy:
                channel.transport.loseConnection()
        return still_open

    def abort_all(self) -> int:
        """Cut every connection still open (the grace period is over); how many."""
        count = 0
        for channel in self._open_connections():
            channel.transport.abortConnection()
            count += 1
        return count

    def _open_connections(self) -> list[StorChannel]:
        return [c for c in list(self.connections)
                if c.transport is not None and not getattr(c.transport, "disconnected", False)]

