"""memcached on the reactor: one pipelined connection per server, each kept open by a ClientService.

Why on the reactor rather than pymemcache in a thread pool (``bench/memcache.py``,
docs/design.rst): with 64 requests in flight a round trip takes 7–11 µs of reactor CPU
instead of 16–19 (requests share writes and reads on one connection); one at
a time it takes a few µs more (the socket calls are the reactor's), but the
pool's threads spend ~60 µs more per call holding the GIL the reactor needs,
so a busy reactor loses 51–58 µs a call instead of 130–210.  It also answers
in less than half the time (p50 ~40 µs against ~90 on loopback).

Each server is in one of three states:

connecting
    No connection yet, or the last one closed without a fault (memcached
    restarted, an idle connection was cut): requests wait for the next one,
    at most ``timeout`` seconds.
up
    A connection that answered ``version``: requests are written at once,
    pipelined, and answered in order.
down
    A connection attempt failed, or the server did not answer within
    ``timeout``: requests fail at once with :class:`ServerDown`, and the
    :class:`~twisted.application.internet.ClientService` tries again after
    ``retry_timeout`` seconds, then twice as long each time, up to
    ``dead_timeout``.  A new connection is used only once it answers
    ``version``, so a host that accepts connections and never replies costs
    one timeout per attempt, not one per request.

Keys are spread over several servers by rendezvous hashing with BLAKE2b, so
every stor process (and every restart) sends a key to the same server, and
removing a server from the list moves only that server's keys.  A down
server's keys are not moved to the others: they are misses until it is back.
"""

import ipaddress
from collections import deque
from collections.abc import Callable, Sequence
from hashlib import blake2b
from random import random
from typing import Any, TypeVar

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail, gatherResults
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint,
)
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.memcache import MemCacheProtocol
from twisted.python.failure import Failure

from stor.config.memcached import MemcachedServer, UnixServer
from stor.core.reactor import Connection, Reactor
from stor.core.reconnect import Outage, reconnecting

T = TypeVar("T")

StateListener = Callable[[str, BaseException | None], None]
"""Told ``(server name, None)`` when a server answers again, ``(name, error)`` when it goes down."""


class ServerDown(Exception):
    """The key's server is down and left alone for now: no request was sent."""


class MemcachedClient:
    """get/set/delete over several servers; each call fails rather than wait beyond the timeout."""

    def __init__(
        self,
        servers: Sequence[MemcachedServer],
        reactor: Reactor,
        *,
        timeout: float,
        retry_timeout: float,
        dead_timeout: float,
        on_state: StateListener,
    ) -> None:
        if not servers:
            raise ValueError("a memcached client needs at least one server")
        self._servers = [
            _Server(address, reactor, timeout, retry_timeout, dead_timeout, on_state)
            for address in servers
        ]
        self._hashes = [blake2b(s.name.encode("utf-8", "surrogateescape") + b"\0", digest_size=8)
                        for s in self._servers]

    @property
    def connect_failures(self) -> int:
        """Connection attempts since start that failed or never answered, over every server."""
        return sum(s.connect_failures for s in self._servers)

    def start(self) -> None:
        for server in self._servers:
            server.start()

    def stop(self) -> "Deferred[list[None]]":
        """Stop connecting; fires once every connection is closed."""
        return gatherResults([server.stop() for server in self._servers])

    def get(self, key: bytes) -> "Deferred[bytes | None]":
        d = self.server_for(key).call(lambda p: p.get(key))
        return d.addCallback(lambda flags_value: flags_value[1])

    def set(self, key: bytes, value: bytes) -> "Deferred[bool]":
        return self.server_for(key).call(lambda p: p.set(key, value))

    def delete(self, key: bytes) -> "Deferred[bool]":
        return self.server_for(key).call(lambda p: p.delete(key))

    def server_for(self, key: bytes) -> "_Server":
        """The server holding ``key``: the one whose hash with the key scores highest."""
        if len(self._servers) == 1:
            return self._servers[0]
        return max(zip(self._hashes, self._servers), key=lambda hs: _score(hs[0], key))[1]


def _score(server_hash: Any, key: bytes) -> int:
    h = server_hash.copy()
    h.update(key)
    return int.from_bytes(h.digest(), "big")


class _Server:
    """One server: its ClientService, its state, the requests waiting for a connection."""

    def __init__(self, address: MemcachedServer, reactor: Reactor, timeout: float,
                 retry_timeout: float, dead_timeout: float, on_state: StateListener) -> None:
        self.name = address.name
        self.timeout = timeout
        self.clock = reactor
        self._outage = Outage(reactor)
        self.connect_failures = 0
        self._on_state = on_state
        self._running = False
        self._protocol: _Protocol | None = None
        self._waiting: list[Deferred[_Protocol]] = []
        self._reconnect_now = False
        self._failures = 0
        self._backoff = backoffPolicy(initialDelay=retry_timeout, maxDelay=dead_timeout,
                                      factor=2.0, jitter=lambda: random() * retry_timeout / 4)
        self._service = reconnecting(_endpoint(reactor, address, timeout), _Factory(self),
                                     retry=self._retry_delay, clock=reactor,
                                     failed=self._connect_failed, name=f"memcached {self.name}")

    @property
    def down(self) -> bool:
        """A connection failed or timed out, and none has answered since."""
        return self._outage.down

    def start(self) -> None:
        self._running = True
        self._service.startService()

    def stop(self) -> "Deferred[None]":
        self._running = False
        self._release(ServerDown(f"{self.name}: the cache is stopping"))
        return self._service.stopService()

    def call(self, request: "Callable[[MemCacheProtocol], Deferred[T]]") -> "Deferred[T]":
        """``request`` on a connection that answers: now, after a wait for one, or never."""
        if self._protocol is not None:
            return self._protocol.request(request)
        if self.down or not self._running:
            return fail(ServerDown(self.name))
        waiter: Deferred[_Protocol] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        waiter.addTimeout(self.timeout, self.clock)
        return waiter.addCallback(lambda protocol: protocol.request(request))

    # -- what the connections tell -----------------------------------------

    def _made(self, protocol: "_Protocol") -> None:
        """A new connection: used once it answers ``version`` (a black hole never does).

        (ClientService's ``prepareConnection`` cannot reject a connection that
        later closes: the close reaches its state machine in a state that does
        not expect it, hence this check.)
        """
        probe = protocol.request(lambda p: p.version())
        probe.addCallbacks(lambda _: self._answered(protocol),
                           lambda _: protocol.transport.abortConnection())

    def _answered(self, protocol: "_Protocol") -> None:
        self._protocol = protocol
        self._failures = 0
        if self._outage.end() is not None:
            self._on_state(self.name, None)
        self._release(protocol)  # last: what the waiters run next sees the new state

    def _timed_out(self, protocol: "_Protocol") -> None:
        """A request waited ``timeout``: the server is down (told before the requests fail)."""
        if protocol is self._protocol:
            self._protocol = None
        else:  # the ``version`` check: connected, but never answered
            self.connect_failures += 1
        self._reconnect_now = False
        if self._running:
            self._fail(TimeoutError(f"no answer in {self.timeout} s"))

    def _lost(self, protocol: "_Protocol", reason: Failure) -> None:
        """A connection closed: quietly reopened if it was fine, else the server is down."""
        if protocol.timed_out:
            return  # already told
        was_up = protocol is self._protocol
        if was_up:
            self._protocol = None
        self._reconnect_now = was_up
        if was_up or not self._running:
            return
        self.connect_failures += 1  # connected, but closed before it answered
        self._fail(reason.value or ConnectionError("connection lost"))

    def _connect_failed(self, failure: Failure) -> None:
        if self._running and not failure.check(CancelledError):
            self.connect_failures += 1
            self._fail(failure.value or ConnectionError("cannot connect"))

    def _fail(self, error: BaseException) -> None:
        if self._outage.begin():
            self._on_state(self.name, error)
        self._release(ServerDown(f"{self.name}: {error}"))

    def _release(self, outcome: "_Protocol | BaseException") -> None:
        """Hand the waiting requests a connection, or fail them."""
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if isinstance(outcome, BaseException):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)

    def _retry_delay(self, attempt: int) -> float:
        """ClientService asks after each failed attempt and each closed connection."""
        if self._reconnect_now:
            self._reconnect_now = False
            return 0.0
        self._failures += 1
        return float(self._backoff(self._failures - 1))


class _Protocol(MemCacheProtocol):
    """MemCacheProtocol that bounds each request's wait and tells its server what happens.

    MemCacheProtocol's own timeout restarts at every line received, so a
    request queued behind others on a slow server could wait far longer; it
    also moves a timer at every line.  Here a request never waits more than
    ``timeout``: memcached answers in order, so the oldest request waiting is
    the first in :attr:`_sent`, and one timer checks its age, rescheduled only
    when it fires.  When a request is too old, every request waiting fails
    with TimeoutError and the connection is dropped: the server is down.
    """

    transport: Connection  # set by makeConnection before any other call

    def __init__(self, server: _Server) -> None:
        super().__init__(timeOut=None)  # see above: the timing is done here
        self.server = server
        self.timed_out = False
        self._clock = server.clock
        self._sent: deque[float] = deque()  # when each request waiting was sent, oldest first
        self._watchdog: Any = None

    def request(self, send: "Callable[[MemCacheProtocol], Deferred[T]]") -> "Deferred[T]":
        """``send(self)``, failed with the others if it waits longer than ``timeout``."""
        self._sent.append(self._clock.seconds())
        d = send(self)
        if d.called:  # refused before it was sent (a key memcached would refuse)
            self._sent.pop()
            return d
        if self._watchdog is None:
            self._watchdog = self._clock.callLater(self.server.timeout, self._check)
        return d.addBoth(self._done)

    def _done(self, result: T) -> T:
        self._sent.popleft()
        return result

    def _check(self) -> None:
        self._watchdog = None
        if not self._sent:
            return
        waited = self._clock.seconds() - self._sent[0]
        if waited >= self.server.timeout:
            self.timeoutConnection()
        else:
            self._watchdog = self._clock.callLater(self.server.timeout - waited, self._check)

    def connectionMade(self) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)  # requests are small: send each at once
        self.server._made(self)

    def timeoutConnection(self) -> None:
        """Fail every request waiting, and drop the connection."""
        self.timed_out = True
        self.server._timed_out(self)  # first: the requests failed next see the server down
        super().timeoutConnection()
        self.transport.abortConnection()  # no waiting to flush to a server that does not read

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.server._lost(self, reason)  # first: the requests failed next may be retried at once
        super().connectionLost(reason)


class _Factory(Factory):
    """Protocols for one server (its "Starting factory" lines are dropped as noise:
    :mod:`stor.core.reconnect`)."""

    def __init__(self, server: _Server) -> None:
        self.server = server

    def buildProtocol(self, addr: object) -> _Protocol:
        return _Protocol(self.server)


def _endpoint(reactor: Reactor, address: MemcachedServer, timeout: float) -> IStreamClientEndpoint:
    """How to reach ``address``.

    An IP address is connected to directly: HostnameEndpoint would only
    report a refused connection after its ``attemptDelay`` (0.3 s).  A name is
    resolved by HostnameEndpoint off the reactor thread (getaddrinfo in the
    reactor's thread pool), at each connection.
    """
    if isinstance(address, UnixServer):
        return UNIXClientEndpoint(reactor, address.path, timeout=timeout)
    try:
        ip = ipaddress.ip_address(address.host.partition("%")[0])
    except ValueError:
        return HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)
    tcp = TCP6ClientEndpoint if ip.version == 6 else TCP4ClientEndpoint
    return tcp(reactor, address.host, address.port, timeout=timeout)
