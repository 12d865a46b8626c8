"""Datagrams to a named host: the one UDP sender behind statsite and GELF.

:meth:`UdpSender.send` may be called from any thread (log observers run where
an event is emitted) and never blocks, never raises, never waits for DNS:

- the socket is non-blocking; a datagram the kernel will not take now
  (``EAGAIN``, ``ECONNREFUSED`` from an earlier ICMP, ``EMSGSIZE``) is dropped
  and counted in :attr:`UdpSender.dropped`;
- the host name is resolved by ``getaddrinfo`` in the reactor's thread pool at
  start and every :data:`REFRESH` seconds, so a peer that moves is followed and
  a DNS outage only keeps the old address; an IP address needs no lookup; an
  IPv4 address is preferred when a name has both (the old clients were IPv4);
- until the first address is known, datagrams wait in a bounded list
  (:data:`PENDING_LIMIT`; start-up log messages), the newest dropped past it.
"""

import socket
import threading
from collections.abc import Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from stor.core.reactor import Reactor

log = Logger()

REFRESH = 300.0
PENDING_LIMIT = 1000


class UdpSender(Service):
    """Sends datagrams to ``host:port``; ``what`` names the peer in log messages."""

    def __init__(self, host: str, port: int, reactor: Reactor, what: str,
                 refresh: float = REFRESH, pending_limit: int = PENDING_LIMIT) -> None:
        self.host = host
        self.port = port
        self.what = what
        self._reactor = reactor
        self._refresh = refresh
        self._pending_limit = pending_limit
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._address: Any = None
        self._pending: list[bytes] = []
        self._loop: LoopingCall | None = None
        self._unresolved_logged = False
        self._closed = False
        self.sent = 0
        self.dropped = 0

    # -- sending (any thread) ----------------------------------------------------------

    def send(self, datagram: bytes) -> None:
        """Send one datagram now, or keep it until the address is known, or count it dropped."""
        self.send_all((datagram,))

    def send_all(self, datagrams: Iterable[bytes]) -> None:
        """Send datagrams that belong together (GELF chunks): all kept, or all dropped, while unresolved."""
        packets = list(datagrams)
        with self._lock:
            if self._socket is None:
                if not self._closed and len(self._pending) + len(packets) <= self._pending_limit:
                    self._pending.extend(packets)
                else:
                    self.dropped += len(packets)
                return
            self._send_locked(packets)

    def _send_locked(self, packets: list[bytes]) -> None:
        assert self._socket is not None
        for packet in packets:
            try:
                self._socket.sendto(packet, self._address)
                self.sent += 1
            except OSError:
                self.dropped += 1

    # -- the address ------------------------------------------------------------------------

    def resolved(self, family: int, address: Any) -> None:
        """Send to ``address`` from now on; flush what waited for it."""
        with self._lock:
            if self._closed:
                return
            if self._socket is None or self._socket.family != family:
                if self._socket is not None:
                    self._socket.close()
                self._socket = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._address = address
            pending, self._pending = self._pending, []
            self._send_locked(pending)

    def startService(self) -> None:
        super().startService()
        self._closed = False
        numeric = _numeric(self.host, self.port)
        if numeric is not None:  # an IP address: no lookup, no refresh
            self.resolved(*numeric)
            return
        self._loop = LoopingCall(self._resolve)
        self._loop.clock = self._reactor
        self._loop.start(self._refresh, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        with self._lock:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            self.dropped += len(self._pending)
            self._pending = []

    def _resolve(self) -> Any:
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), socket.getaddrinfo,
                              self.host, self.port, type=socket.SOCK_DGRAM)
        d.addCallbacks(self._resolved, self._unresolved)
        return d

    def _resolved(self, infos: list[Any]) -> None:
        if not self.running:
            return
        family, _, _, _, address = _preferred(infos)
        self.resolved(family, address)
        if self._unresolved_logged:
            log.info("{what} host {host} resolves again", what=self.what, host=self.host)
            self._unresolved_logged = False

    def _unresolved(self, failure: Any) -> None:
        if not self._unresolved_logged:  # once per outage, not every refresh
            log.warn("{what} host {host} does not resolve: {error}", what=self.what,
                     host=self.host, error=failure.getErrorMessage())
            self._unresolved_logged = True


def _preferred(infos: list[Any]) -> Any:
    """IPv4 when the name has it: the old service's IO::Socket::INET only spoke IPv4,
    so ``localhost`` means 127.0.0.1 to a statsite listening there."""
    return next((i for i in infos if i[0] == socket.AF_INET), infos[0])


def _numeric(host: str, port: int) -> tuple[int, Any] | None:
    """(family, address) when ``host`` is an IP address, found without DNS; else None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                   flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
    except (OSError, UnicodeError):
        return None
    family, _, _, _, address = infos[0]
    return family, address
