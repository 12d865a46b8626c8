"""AMQP publishing of requested SHAs (docs/SPEC.md §5), fire-and-forget on the reactor.

Every well-formed GET/HEAD hands its SHA to :meth:`Publisher.publish`, which
must never delay or fail the request.  :class:`AmqpPublisher` therefore only
ever appends to an in-memory queue and, when a channel is open, writes frames
to the transport; a broker that is down, slow or restarting only changes where
the message waits:

- *buffer*: not yet sent (disconnected, or too many unconfirmed).  Bounded;
  when full the oldest message is dropped and counted (``amqp.dropped.count``).
- *in flight*: sent, waiting for the broker's publisher confirm.  If the
  connection drops first they go back to the front of the buffer and are sent
  again after reconnecting, so a message is delivered at least once and in
  order unless it is dropped for space.

The connection uses pika's Twisted adapter on the running reactor and is
re-established with capped, jittered exponential backoff.
"""

from __future__ import annotations

import itertools
import random
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from pika.exceptions import NackError
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.config.amqp import DEFAULT_HEARTBEAT, AmqpConfig
from stor.core.metrics import Metrics

log = Logger()

DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_MAX_IN_FLIGHT = 1_000
CLOSE_TIMEOUT = 5.0
"""Seconds a clean close may take before the socket is simply dropped."""

DROPPED = "amqp.dropped.count"
NACKED = "amqp.nacked.count"
CONNECTED = "amqp.connect.count"
DISCONNECTED = "amqp.disconnect.count"

# Reactor implementations name their parameters differently, so the reactor is
# only ever called positionally and typed loosely (IReactorTCP + IReactorTime).
Reactor = Any


class Publisher(Protocol):
    """Where the HTTP layer sends the SHA of every well-formed GET/HEAD."""

    def publish(self, sha: str) -> None: ...


class NoPublisher:
    """Publishing disabled (no ``rabbitmq_uri``): routes call it without a flag."""

    def publish(self, sha: str) -> None:
        pass


@dataclass(frozen=True)
class Backoff:
    """Delays between connection attempts: ``initial`` doubling up to ``maximum``.

    Jitter (± ``jitter`` of the delay) keeps a fleet of stor hosts from
    reconnecting to a restarted broker in lock-step.
    """

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1

    def delay(self, failures: int, rng: random.Random) -> float:
        """Seconds to wait after ``failures`` consecutive failed attempts (>= 1)."""
        exponent = min(max(failures - 1, 0), 64)  # past the cap anyway; avoids float overflow
        base = min(self.maximum, self.initial * self.factor**exponent)
        return base * (1.0 + rng.uniform(-self.jitter, self.jitter))


def build_publisher(amqp: AmqpConfig | None, reactor: Reactor,
                    metrics: Metrics) -> "NoPublisher | AmqpPublisher":
    """The publisher the config asks for (a do-nothing one without ``rabbitmq_uri``)."""
    if amqp is None:
        return NoPublisher()
    return AmqpPublisher(pika.URLParameters(amqp.url), amqp.exchange, amqp.routing_key,
                         reactor, metrics)


def broker_endpoint(params: pika.ConnectionParameters, reactor: Reactor) -> IStreamClientEndpoint:
    """A Twisted endpoint for the broker in ``params``.

    pika's Twisted adapter ignores host, port and TLS settings: Twisted makes
    the connection.  ``amqps`` is verified against the system trust store for
    the URI's host name (pika's ``ssl_options`` build a stdlib context Twisted
    cannot use).
    """
    tcp = endpoints.HostnameEndpoint(reactor, params.host, params.port,
                                     timeout=params.socket_timeout or 10.0)
    if params.ssl_options is None:
        return tcp
    hostname = params.ssl_options.server_hostname or params.host
    return endpoints.wrapClientTLS(ssl.optionsForClientTLS(hostname), tcp)


class HandshakeTimeout(Exception):
    """The broker accepted the TCP connection but did not finish the AMQP handshake."""


class _Connection(TwistedProtocolConnection):
    """pika's Twisted connection, keeping why a handshake failed or the broker closed it.

    The adapter errbacks ``ready`` with ``AMQPConnectionError(1)`` whatever
    went wrong, and a broker's refusal (``Connection.Close`` 403 for bad
    credentials, 530 for a vhost) is overwritten by the clean TCP close that
    follows it.  The real reason is what an operator needs in the log, so it
    is kept in ``failure_reason`` (best effort: it reads pika internals).
    """

    failure_reason: Exception | None = None

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        refused = getattr(getattr(self, "_impl", None), "_error", None)
        if isinstance(refused, pika.exceptions.ConnectionClosedByBroker):
            self.failure_reason = refused
        super().connectionLost(reason)

    def _on_connection_failed(self, connection: Any, error: Exception | None = None) -> None:
        self.failure_reason = self.failure_reason or error
        super()._on_connection_failed(connection, error)


class _Once(protocol.Factory):
    """Hands a ready-made protocol to an endpoint, quietly (no log line per attempt)."""

    noisy = False

    def __init__(self, connection: protocol.Protocol) -> None:
        self._connection = connection

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        return self._connection


def _limit_unacknowledged_time(transport: Any, seconds: float) -> None:
    """Make the kernel give up on a peer that stops acknowledging our data.

    pika closes a connection whose heartbeats stopped with ``loseConnection``,
    which waits for unsent data to drain: without this, a vanished broker
    could hold the socket (and so the reconnect) for the kernel's ~15 minutes.
    """
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or seconds <= 0:
        return
    try:
        transport.getHandle().setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except (AttributeError, OSError) as e:
        log.debug("cannot set TCP_USER_TIMEOUT: {error}", error=e)


class AmqpPublisher(Service):
    """Publishes SHAs to a topic exchange over one reconnecting AMQP connection.

    ``connected`` is true while a confirm-mode channel is open;  ``published``
    counts messages the broker confirmed, ``dropped`` those lost for buffer
    space, ``attempts`` connection attempts made.
    """

    def __init__(
        self,
        params: pika.ConnectionParameters,
        exchange: str,
        routing_key: str,
        reactor: Reactor,
        metrics: Metrics,
        *,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        backoff: Backoff = Backoff(),
        endpoint: IStreamClientEndpoint | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if buffer_size < 1 or max_in_flight < 1:
            raise ValueError("buffer_size and max_in_flight must be at least 1")
        self._params = params
        self._exchange = exchange
        self._routing_key = routing_key
        self._reactor = reactor
        self._metrics = metrics
        self._buffer_size = buffer_size
        self._max_in_flight = max_in_flight
        self._backoff = backoff
        self._endpoint = endpoint or broker_endpoint(params, reactor)
        self._rng = rng or random.Random()
        self._where = f"{params.host}:{params.port}{'/' + params.virtual_host.lstrip('/')}"

        self._buffer: deque[bytes] = deque()
        self._in_flight: dict[int, bytes] = {}  # insertion order = publish order
        self._sequence = itertools.count()
        self._connection: _Connection | None = None
        self._channel: TwistedChannel | None = None
        self._handshaking: _Connection | None = None
        self._attempt: defer.Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._failures = 0  # consecutive failures, for the backoff
        self._connected_at = 0.0
        self._last_failure = ""
        self._drop_reason = ""
        self._overflowing = False
        self._stopping = False

        self.connected = False
        self.published = 0
        self.dropped = 0
        self.attempts = 0

    # -- what the HTTP layer and operators see ------------------------------

    @property
    def buffered(self) -> int:
        """Messages waiting to be sent (not counting those awaiting a confirm)."""
        return len(self._buffer)

    @property
    def in_flight(self) -> int:
        """Messages sent and not yet confirmed by the broker."""
        return len(self._in_flight)

    def publish(self, sha: str) -> None:
        """Queue ``sha`` for the exchange and send what the channel can take now.

        Never raises and never waits: at worst the message sits in the buffer.
        """
        try:
            self._enqueue(sha.encode("utf-8", "replace"))
            self._flush()
        except Exception:  # a publish must never fail a GET; the log says why
            log.failure("AMQP publish failed")

    # -- the buffer ----------------------------------------------------------

    def _enqueue(self, body: bytes) -> None:
        self._buffer.append(body)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest buffered messages beyond the bound, counting them."""
        excess = len(self._buffer) - self._buffer_size
        if excess <= 0:
            return
        for _ in range(excess):
            self._buffer.popleft()
        self.dropped += excess
        self._metrics.incr(DROPPED, excess)
        if not self._overflowing:
            self._overflowing = True
            log.warn("AMQP buffer full ({size} messages): dropping the oldest", size=self._buffer_size)

    def _flush(self) -> None:
        """Send buffered messages while a channel is open and the confirm window has room."""
        while self._channel is not None and self._buffer and len(self._in_flight) < self._max_in_flight:
            self._send(self._buffer.popleft())

    def _send(self, body: bytes) -> None:
        assert self._channel is not None
        tag = next(self._sequence)
        self._in_flight[tag] = body
        try:
            d = self._channel.basic_publish(self._exchange, self._routing_key, body)
        except Exception as e:  # pika refused: the channel is going; _channel_closed re-buffers
            self._abort_connection(f"basic_publish refused: {_describe(e)}")
            return
        d.addCallbacks(self._confirmed, self._unconfirmed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _confirmed(self, _ack: object, tag: int) -> None:
        if self._in_flight.pop(tag, None) is not None:
            self.published += 1
        self._flush()

    def _unconfirmed(self, failure: Failure, tag: int) -> None:
        """A nack loses the message (counted); other errors mean the channel closed."""
        if failure.check(NackError) and self._in_flight.pop(tag, None) is not None:
            self._metrics.incr(NACKED)
            log.warn("AMQP broker nacked a message")
            self._flush()
        # ChannelClosed & co: _channel_closed puts the message back in the buffer.

    def _requeue_in_flight(self) -> None:
        """Unconfirmed messages go back before the buffered ones, in their order."""
        if self._in_flight:
            self._buffer.extendleft(reversed(self._in_flight.values()))
            self._in_flight.clear()
            self._trim()

    # -- the connection ------------------------------------------------------

    def startService(self) -> None:
        """Start connecting; returns at once, publishes are buffered until connected."""
        super().startService()
        self._stopping = False
        self._connect()

    def stopService(self) -> defer.Deferred[None]:
        """Stop reconnecting and close the connection; fires once the socket is closed."""
        super().stopService()
        return defer.ensureDeferred(self._stop())

    def _connect(self) -> None:
        self._retry = None
        self.attempts += 1
        attempt = defer.ensureDeferred(self._open())
        self._attempt = attempt
        attempt.addCallbacks(self._opened, self._open_failed)

    async def _open(self) -> tuple[_Connection, TwistedChannel]:
        """Connect, handshake, open a confirm-mode channel and declare the exchange.

        pika's stack timeout is not applied by its Twisted adapter, so a broker
        that accepts TCP but never answers is cut off here.
        """
        connection = _Connection(self._params, custom_reactor=self._reactor)
        await self._endpoint.connect(_Once(connection))
        self._handshaking = connection
        _limit_unacknowledged_time(connection.transport, self._heartbeat_seconds() * 2)
        timeout = self._params.stack_timeout or 15.0
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            connection.transport.abortConnection()

        watchdog = self._reactor.callLater(timeout, give_up)
        try:
            await connection.ready
            channel = await connection.channel()
            await channel.exchange_declare(exchange=self._exchange, exchange_type="topic", durable=True)
            await channel.confirm_delivery()
        except Exception as e:
            connection.transport.abortConnection()  # e.g. the declare was refused: don't leak the socket
            if timed_out:
                raise HandshakeTimeout(f"no AMQP handshake within {timeout:g}s") from e
            raise connection.failure_reason or e
        finally:
            self._handshaking = None
            if watchdog.active():
                watchdog.cancel()
        return connection, channel

    def _heartbeat_seconds(self) -> float:
        heartbeat = self._params.heartbeat
        return float(heartbeat) if isinstance(heartbeat, (int, float)) else DEFAULT_HEARTBEAT

    def _opened(self, opened: tuple[_Connection, TwistedChannel]) -> None:
        connection, channel = opened
        self._attempt = None
        if self._stopping:  # cannot happen (stop aborts a handshake first); never leak a socket
            connection.transport.abortConnection()
            return
        self._connection, self._channel = connection, channel
        self.connected = True
        self._connected_at = self._reactor.seconds()
        self._last_failure = ""
        self._overflowing = False
        channel.on_closed.addBoth(self._channel_closed)
        assert connection.closed is not None
        connection.closed.addBoth(self._connection_closed)
        self._metrics.incr(CONNECTED)
        log.info("AMQP connected to {where}, exchange {exchange!r}; {count} messages to send",
                 where=self._where, exchange=self._exchange, count=len(self._buffer))
        self._flush()

    def _open_failed(self, failure: Failure) -> None:
        self._attempt = None
        if self._stopping:
            return
        self._failures += 1
        reason = _describe(failure)
        if reason != self._last_failure:  # a broker down for hours logs once, not per attempt
            self._last_failure = reason
            log.warn("AMQP cannot connect to {where}: {reason}; retrying with backoff",
                     where=self._where, reason=reason)
        self._schedule_retry()

    def _channel_closed(self, reason: object) -> None:
        """The channel went away (alone, or with the connection): stop sending, keep the messages."""
        if self._channel is None:
            return
        self._channel = None
        self.connected = False
        self._requeue_in_flight()
        if not self._stopping and self._connection is not None and self._connection.is_open:
            self._abort_connection(f"channel closed: {_describe(reason)}")

    def _connection_closed(self, reason: object) -> None:
        if self._connection is not None and self._connection.failure_reason is not None:
            reason = self._connection.failure_reason  # e.g. 320 CONNECTION_FORCED: the broker is stopping
        self._channel_closed(reason)
        self._connection = None
        self._metrics.incr(DISCONNECTED)
        if self._stopping:
            return
        stable = self._reactor.seconds() - self._connected_at >= self._backoff.maximum
        self._failures = 1 if stable else self._failures + 1  # a flapping broker gets backoff too
        self._last_failure = self._drop_reason or _describe(reason)
        self._drop_reason = ""
        log.warn("AMQP connection to {where} lost ({reason}); buffering and reconnecting",
                 where=self._where, reason=self._last_failure)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        delay = self._backoff.delay(self._failures, self._rng)
        self._retry = self._reactor.callLater(delay, self._connect)

    def _abort_connection(self, reason: str) -> None:
        """Drop the socket now; pika's close callbacks then log ``reason`` and reconnect."""
        self._drop_reason = reason
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.abortConnection()

    async def _stop(self) -> None:
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        await self._cancel_attempt()
        await self._close_connection()
        unsent = len(self._buffer) + len(self._in_flight)
        log.info("AMQP publisher stopped; {unsent} messages unsent", unsent=unsent)

    async def _cancel_attempt(self) -> None:
        attempt = self._attempt
        if attempt is None:
            return
        if self._handshaking is not None:
            self._handshaking.transport.abortConnection()  # ready/channel calls then errback
        else:
            attempt.cancel()  # still connecting TCP (or resolving the name)
        await attempt  # its callbacks swallow the failure

    async def _close_connection(self) -> None:
        """Close cleanly (the broker sees a normal close), but never wait forever."""
        connection = self._connection
        if connection is None or connection.closed is None:
            return
        closed = connection.closed
        self._channel = None  # nothing more is sent; confirms may still arrive until the close
        self.connected = False
        watchdog = self._reactor.callLater(CLOSE_TIMEOUT, connection.transport.abortConnection)
        try:
            connection.close()
        except pika.exceptions.ConnectionWrongStateError:
            pass  # already closing: just wait for it
        try:
            await closed
        finally:
            if watchdog.active():
                watchdog.cancel()
            self._requeue_in_flight()  # kept for a later startService


def _describe(reason: object) -> str:
    """A short, password-free reason for a log line."""
    if isinstance(reason, Failure):
        reason = reason.value
    if isinstance(reason, BaseException):
        text = str(reason) or type(reason).__name__
        return f"{type(reason).__name__}: {text}" if text != type(reason).__name__ else text
    return str(reason)
