"""Test peers for the AMQP publisher: a TCP relay the test can cut, and a consumer.

:class:`Relay` sits between the publisher and the real broker on a loopback
port of its own, so a test can make the broker "disappear" (``cut``) and
"come back" (``restore``) on the same address without touching RabbitMQ.
:class:`Consumer` binds a private queue to the test's exchange and collects
message bodies, with an awaitable "wait for N messages" that has a deadline.
Both run on the test's reactor, so there are no threads to synchronise with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.interfaces import IListeningPort

BROKER = ("127.0.0.1", 5672)
BROKER_URI = "amqp://guest:guest@127.0.0.1:5672/%2F"


async def eventually(predicate: Callable[[], bool], reactor: Any, timeout: float = 10.0,
                     interval: float = 0.01, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, interval, lambda: None)


# -- the relay ----------------------------------------------------------------


class _Upstream(protocol.Protocol):
    """The relay's connection to the broker, feeding the client side."""

    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def dataReceived(self, data: bytes) -> None:
        self.downstream.from_broker += data
        self.downstream.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.downstream.transport.abortConnection()


class _Downstream(protocol.Protocol):
    """A client's connection to the relay; opens its own connection to the broker."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.closed = False
        self.held = False
        self.lost: defer.Deferred[None] = defer.Deferred()
        self.from_client = bytearray()
        self.from_broker = bytearray()

    def connectionMade(self) -> None:
        self.relay.connections.add(self)
        self.relay.accepted += 1
        self.relay.accept_times.append(time.monotonic())
        if self.relay.mode == "refuse":
            self.transport.abortConnection()
            return
        if self.relay.mode == "hold":
            self.held = True  # accept, then never answer: a hung broker
            return
        upstream = _Upstream(self)
        d = endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(self.relay.reactor, *self.relay.target), upstream)
        d.addCallbacks(self._up, lambda _f: self.transport.abortConnection())

    def _up(self, upstream: _Upstream) -> None:
        if self.closed:
            upstream.transport.abortConnection()
            return
        self.upstream = upstream
        for data in self.pending:
            upstream.transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        self.from_client += data
        if self.held:
            return
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.closed = True
        self.relay.connections.discard(self)
        self.relay.finished.append(self)
        if self.upstream is not None:
            self.upstream.transport.abortConnection()
        self.lost.callback(None)


class Relay(protocol.Factory):
    """A loopback TCP relay to the broker that can be cut and restored.

    ``cut()`` stops listening *and* drops every relayed connection (new
    connections are then refused); ``restore()`` listens again on the same
    port.  ``mode`` decides what a new connection gets: ``"relay"`` (the
    broker), ``"refuse"`` (accepted and dropped at once) or ``"hold"``
    (accepted, then silence: a hung broker).  ``accepted`` counts connection
    attempts whatever the mode, ``accept_times`` says when (``time.monotonic()``);
    ``finished`` holds the closed connections, with the bytes each side sent.
    """

    def __init__(self, reactor: Any, target: tuple[str, int] = BROKER) -> None:
        self.reactor = reactor
        self.target = target
        self.port = 0
        self.listening: IListeningPort | None = None
        self.connections: set[_Downstream] = set()
        self.accepted = 0
        self.accept_times: list[float] = []
        self.finished: list[_Downstream] = []
        self.mode = "relay"

    def buildProtocol(self, addr: object) -> _Downstream:
        return _Downstream(self)

    @property
    def uri(self) -> str:
        return self.uri_for("guest", "guest")

    def uri_for(self, user: str, password: str) -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/%2F"

    async def start(self) -> Relay:
        await self.restore()
        return self

    async def restore(self) -> None:
        """Listen (again) on the relay's port."""
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, self.port, interface="127.0.0.1")
        self.listening = await endpoint.listen(self)
        self.port = self.listening.getHost().port

    async def cut(self) -> None:
        """Refuse new connections and drop the live ones; fires once all are gone."""
        if self.listening is not None:
            listening, self.listening = self.listening, None
            await listening.stopListening()
        await self.drop()

    async def drop(self) -> None:
        """Drop every relayed connection (both sides), as a broker crash would."""
        lost = [c.lost for c in self.connections]
        for c in list(self.connections):
            c.transport.abortConnection()
        await defer.gatherResults(lost)

    async def stop(self) -> None:
        await self.cut()


def amqp_methods(data: bytes) -> list[tuple[int, int]]:
    """The (class id, method id) of each AMQP method frame in ``data`` (after the protocol
    header a client sends first); e.g. (10, 50) is Connection.Close, (10, 51) Close-Ok."""
    if data.startswith(b"AMQP"):
        data = data[8:]
    methods = []
    while len(data) >= 8:
        kind, size = data[0], int.from_bytes(data[3:7], "big")
        if kind == 1:  # a method frame: class and method ids open its payload
            methods.append((int.from_bytes(data[7:9], "big"), int.from_bytes(data[9:11], "big")))
        data = data[8 + size:]
    return methods


# -- the consumer -------------------------------------------------------------


async def connect_broker(reactor: Any) -> TwistedProtocolConnection:
    """A pika Twisted connection straight to the broker, ready for channels."""
    connection = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, *BROKER),
        TwistedProtocolConnection(pika.URLParameters(BROKER_URI), custom_reactor=reactor))
    await connection.ready
    return connection


async def close_broker(connection: TwistedProtocolConnection) -> None:
    """Close a connection from :func:`connect_broker` and wait until it is closed."""
    if connection.closed is not None:
        closed = connection.closed
        connection.close()
        await closed


async def delete_exchange(reactor: Any, exchange: str) -> None:
    """Remove a test's exchange: stor declares them durable, so they would pile up."""
    connection = await connect_broker(reactor)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(exchange=exchange)
    finally:
        await close_broker(connection)


class Consumer:
    """A private queue bound to a test's exchange, collecting message bodies."""

    def __init__(self, reactor: Any, exchange: str, routing_key: str) -> None:
        self.reactor = reactor
        self.exchange = exchange
        self.routing_key = routing_key
        self.queue_name = f"stor-test-{uuid.uuid4().hex}"
        self.bodies: list[bytes] = []
        self._connection: TwistedProtocolConnection | None = None
        self._channel: TwistedChannel | None = None
        self._reader: defer.Deferred[None] | None = None

    async def start(self) -> Consumer:
        """Connect straight to the broker, declare the exchange as stor does, bind, consume."""
        self._connection = await connect_broker(self.reactor)
        channel = self._channel = await self._connection.channel()
        await channel.exchange_declare(exchange=self.exchange, exchange_type="topic", durable=True)
        await channel.queue_declare(queue=self.queue_name, exclusive=True, auto_delete=True)
        await channel.queue_bind(queue=self.queue_name, exchange=self.exchange,
                                 routing_key=self.routing_key)
        queue, _tag = await channel.basic_consume(queue=self.queue_name, auto_ack=True)
        self._reader = defer.ensureDeferred(self._read(queue))
        return self

    async def _read(self, queue: Any) -> None:
        try:
            while True:
                _channel, _method, _properties, body = await queue.get()
                self.bodies.append(body)
        except Exception:  # the queue is closed when the consumer stops
            return

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The bodies once at least ``count`` have arrived; fails after ``timeout``."""
        await eventually(lambda: len(self.bodies) >= count, self.reactor, timeout,
                         what=f"{count} messages (have {len(self.bodies)})")
        return list(self.bodies)

    async def delete_exchange(self) -> None:
        """Delete the test's exchange (and so the queue's binding) behind the publisher's back."""
        assert self._channel is not None
        await self._channel.exchange_delete(exchange=self.exchange)

    async def exchange_exists(self) -> bool:
        """Whether the exchange exists, asked on a throw-away channel (a 404 closes it)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            await channel.exchange_declare(exchange=self.exchange, passive=True)
        except pika.exceptions.ChannelClosed:
            return False
        channel.close()
        await channel.on_closed
        return True

    async def close(self) -> None:
        """Delete the test's exchange (it is durable) and close the connection."""
        if self._channel is not None and self._channel.is_open:
            await self._channel.exchange_delete(exchange=self.exchange)
        if self._connection is not None:
            await close_broker(self._connection)
        if self._reader is not None:
            await self._reader
