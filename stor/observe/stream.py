"""Messages to a TCP peer over a connection that comes back: statsite over TCP, GELF over TCP.

:meth:`StreamSender.send` may be called from any thread and never blocks:
the write happens on the reactor thread, over a connection kept by Twisted's
``ClientService`` (reconnecting with an exponential backoff of at most
:data:`MAX_DELAY` seconds; the host name is looked up again on every attempt,
off the reactor thread).  While there is no connection, or the peer reads more
slowly than stor writes (the transport asks its producer to pause), messages
wait in a bounded buffer; past :data:`BUFFER_LIMIT` messages the oldest is
dropped and counted in :attr:`StreamSender.dropped`.  The log gets one warning
per outage and one line when the peer is back (:mod:`stor.core.reconnect`).
"""

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from zope.interface import implementer

from stor.core.reactor import Connection, Reactor
from stor.core.reconnect import Outage, reconnecting

log = Logger()

BUFFER_LIMIT = 10_000
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
CONNECT_TIMEOUT = 5.0


class _Link(Protocol):
    transport: Connection  # set by makeConnection before connectionMade

    def __init__(self, sender: "StreamSender") -> None:
        self.sender = sender

    def connectionMade(self) -> None:
        self.sender._connected(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:
        self.sender._lost(self, reason)

    def dataReceived(self, data: bytes) -> None:
        pass  # statsite and Graylog say nothing back


@implementer(IPushProducer)
class StreamSender(Service):
    """Writes each message to ``host:port`` once connected; ``what`` names the peer in logs."""

    def __init__(self, host: str, port: int, reactor: Reactor, what: str,
                 limit: int = BUFFER_LIMIT, retry: Callable[[int], float] | None = None) -> None:
        self.host = host
        self.port = port
        self.what = what
        self._reactor = reactor
        self._limit = limit
        self._buffer: deque[bytes] = deque()
        self._link: _Link | None = None
        self._paused = False
        self._closed = False
        self._outage = Outage(reactor)
        self.sent = 0
        self.dropped = 0
        endpoint = HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
        self._service = reconnecting(endpoint, Factory.forProtocol(lambda: _Link(self)),
                                     retry=retry or backoffPolicy(FIRST_DELAY, MAX_DELAY,
                                                                  factor=2.0),
                                     clock=reactor, failed=self._unreachable,
                                     name=f"{what} {host}:{port}")

    # -- sending ------------------------------------------------------------------------------

    def send(self, message: bytes) -> None:
        """Write ``message`` when the connection takes it; from any thread, never blocking."""
        if threadable.isInIOThread():
            self._send(message)
        else:
            self._reactor.callFromThread(self._send, message)

    def _send(self, message: bytes) -> None:
        if self._closed:
            self.dropped += 1
            return
        if self._link is not None and not self._paused and not self._buffer:
            self._write(message)
            return
        if len(self._buffer) >= self._limit:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(message)

    def _write(self, message: bytes) -> None:
        assert self._link is not None and self._link.transport is not None
        self._link.transport.write(message)
        self.sent += 1

    def _flush(self) -> None:
        while self._buffer and self._link is not None and not self._paused:
            self._write(self._buffer.popleft())

    # -- the connection --------------------------------------------------------------------

    def _connected(self, link: _Link) -> None:
        self._link = link
        self._paused = False
        assert link.transport is not None
        link.transport.registerProducer(self, True)
        lasted = self._outage.end()
        log.info("{what}: connected to {host}:{port}{after}", what=self.what, host=self.host,
                 port=self.port, after="" if lasted is None else f" again after {lasted:.1f}s")
        self._flush()

    def _lost(self, link: _Link, reason: Failure) -> None:
        if self._link is link:
            self._link = None
            self._paused = False
            if not self._closed and self._outage.begin():
                log.warn("{what}: connection to {host}:{port} lost ({why}); reconnecting",
                         what=self.what, host=self.host, port=self.port,
                         why=reason.getErrorMessage())

    def _unreachable(self, failure: Failure) -> None:
        """A connection attempt failed: a warning if that starts an outage (not after a
        lost connection, already told), then silence until the peer is back."""
        if not self._closed and self._outage.begin():
            log.warn("{what}: cannot connect to {host}:{port} ({why}); retrying, keeping up to "
                     "{limit} messages", what=self.what, host=self.host, port=self.port,
                     why=failure.getErrorMessage(), limit=self._limit)

    # IPushProducer: the transport's buffer is full (pause) or drained (resume)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._flush()

    def stopProducing(self) -> None:
        self._paused = True

    # -- service --------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._closed = False
        self._outage.forget()
        self._service.startService()

    def stopService(self) -> Any:
        super().stopService()
        self._closed = True
        self.dropped += len(self._buffer)
        self._buffer.clear()
        return self._service.stopService()
