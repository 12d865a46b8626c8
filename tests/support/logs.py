"""Peers that receive what stor sends about itself: UDP and TCP sockets of the test's own.

Two kinds:

- for tests running in the reactor (pytest-twisted): :class:`Datagrams` and
  :class:`Stream`, Twisted listeners whose ``wait`` returns a Deferred;
- for tests driving a stor *process*: :class:`UdpReader` and :class:`TcpReader`,
  plain sockets read with a deadline (the reactor is not involved).

``statsite`` (:class:`Statsite`): a UDP socket in the reactor collecting statsd lines.

GELF helpers decode what Graylog would: plain, gzip or zlib JSON, chunked or not.
"""

import gzip
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

TIMEOUT = 10.0


def gelf_json(payload: bytes) -> dict[str, Any]:
    """A GELF payload (plain, gzip or zlib) as Graylog reads it."""
    if payload[:2] == b"\x1f\x8b":
        payload = gzip.decompress(payload)
    elif payload[:1] == b"\x78":
        payload = zlib.decompress(payload)
    return json.loads(payload)


class GelfAssembler:
    """Puts GELF chunks back together; ``take`` returns a whole message or None."""

    def __init__(self) -> None:
        self.chunked = 0
        self._parts: dict[bytes, dict[int, bytes]] = {}

    def take(self, datagram: bytes) -> dict[str, Any] | None:
        if datagram[:2] == b"\x1e\x0f":
            message_id, seq, count = datagram[2:10], datagram[10], datagram[11]
            parts = self._parts.setdefault(message_id, {})
            parts[seq] = datagram[12:]
            if len(parts) < count:
                return None
            del self._parts[message_id]
            self.chunked += 1
            datagram = b"".join(parts[i] for i in range(count))
        return gelf_json(datagram)


class _Waiting:
    """Items seen so far, and Deferreds waiting for one that matches."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._waiters: list[tuple[Callable[[Any], bool], Deferred[Any]]] = []

    def add(self, item: Any) -> None:
        self.items.append(item)
        for waiter in list(self._waiters):
            if waiter[0](item):
                self._waiters.remove(waiter)
                waiter[1].callback(item)

    def wait(self, match: Callable[[Any], bool], timeout: float = TIMEOUT) -> "Deferred[Any]":
        """The first item (seen or to come) for which ``match`` is true."""
        for item in self.items:
            if match(item):
                return succeed(item)
        d: Deferred[Any] = Deferred()
        self._waiters.append((match, d))
        return d.addTimeout(timeout, reactor)


class Datagrams(DatagramProtocol, _Waiting):
    """A UDP socket on loopback; ``items`` are the datagrams received."""

    def __init__(self) -> None:
        _Waiting.__init__(self)
        self.port = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.add(data)


class _StreamProtocol(Protocol):
    def __init__(self, stream: "Stream") -> None:
        self.stream = stream

    def connectionMade(self) -> None:
        self.stream.connections += 1
        self.stream.current = self

    def dataReceived(self, data: bytes) -> None:
        self.stream.received(data)


class Stream(Factory, _Waiting):
    """A TCP listener on loopback; ``items`` are the frames received (split at ``separator``)."""

    def __init__(self, separator: bytes) -> None:
        _Waiting.__init__(self)
        self.separator = separator
        self.connections = 0
        self.current: _StreamProtocol | None = None
        self._buffer = b""

    def buildProtocol(self, addr: Any) -> Protocol:
        return _StreamProtocol(self)

    def received(self, data: bytes) -> None:
        self._buffer += data
        *frames, self._buffer = self._buffer.split(self.separator)
        for frame in frames:
            self.add(frame)


@pytest_twisted.async_yield_fixture
async def datagrams() -> Any:
    """A UDP socket the test reads (in the reactor)."""
    peer = Datagrams()
    port = reactor.listenUDP(0, peer, interface="127.0.0.1")
    peer.port = port.getHost().port
    yield peer
    await port.stopListening()


class Statsite(DatagramProtocol):
    """A UDP socket of the test's own that collects statsd lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.datagrams: list[bytes] = []
        self._waiters: list[tuple[str, int, Deferred[str]]] = []

    def datagramReceived(self, data: bytes, addr: object) -> None:
        self.datagrams.append(data)
        for line in data.decode().splitlines():
            self.lines.append(line)
        for waiter in list(self._waiters):
            pattern, count, d = waiter
            found = self._matching(pattern)
            if len(found) >= count:
                self._waiters.remove(waiter)
                d.callback(found[count - 1])

    def _matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.fullmatch(pattern, line)]

    def wait_for(self, pattern: str, timeout: float = 5.0, count: int = 1) -> "Deferred[str]":
        """The ``count``-th line (already seen or yet to come) matching ``pattern`` in full."""
        found = self._matching(pattern)
        if len(found) >= count:
            return succeed(found[count - 1])
        d: Deferred[str] = Deferred()
        self._waiters.append((pattern, count, d))
        return d.addTimeout(timeout, reactor)


@pytest.fixture
def statsite() -> Iterator[Statsite]:
    proto = Statsite()
    port = reactor.listenUDP(0, proto, interface="127.0.0.1")
    proto.port = port.getHost().port
    yield proto
    port.stopListening()


# -- for stor processes: plain sockets ---------------------------------------------------------------


class UdpReader:
    """A UDP socket on loopback, read until what the test waits for arrives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []

    def until(self, match: Callable[[bytes], bool], what: str,
              timeout: float = 30.0, poke: Callable[[], object] | None = None) -> bytes:
        """The first datagram (seen or to come) ``match`` accepts; ``poke`` runs between reads."""
        for datagram in self.received:
            if match(datagram):
                return datagram
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if poke is not None:
                poke()
            self.sock.settimeout(0.2 if poke is not None else max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.received.append(datagram)
            if match(datagram):
                return datagram
        pytest.fail(f"no {what} among {len(self.received)} datagrams: {self.received[-10:]!r}")

    def close(self) -> None:
        self.sock.close()


class TcpReader:
    """A TCP listener on loopback; a thread accepts and collects everything sent to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.data = b""
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        conns: list[socket.socket] = []
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
                conn.settimeout(0.05)
                conns.append(conn)
            except (TimeoutError, OSError):
                pass
            for conn in list(conns):
                try:
                    chunk = conn.recv(65536)
                except (TimeoutError, OSError):
                    continue
                if not chunk:  # closed by stor
                    conns.remove(conn)
                    conn.close()
                    continue
                with self._lock:
                    self.data += chunk
        for conn in conns:
            conn.close()

    def frames(self, separator: bytes) -> list[bytes]:
        with self._lock:
            return self.data.split(separator)[:-1]

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def udp_reader() -> Iterator[UdpReader]:
    reader = UdpReader()
    yield reader
    reader.close()


@pytest.fixture
def udp_reader2() -> Iterator[UdpReader]:
    reader = UdpReader()
    yield reader
    reader.close()


@pytest.fixture
def tcp_reader() -> Iterator[TcpReader]:
    reader = TcpReader()
    yield reader
    reader.close()
