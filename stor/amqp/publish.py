"""AMQP publishing of requested SHAs (docs/SPEC.md §5), fire-and-forget on the reactor.

Every well-formed GET/HEAD hands its SHA to :meth:`AmqpPublisher.publish`,
which must never delay or fail the request.  :class:`AmqpPublisher` therefore only
ever appends to an in-memory queue and, when a channel is open, writes frames
to the transport; a broker that is down, slow or restarting only changes where
the message waits:

- *buffer*: not yet sent (disconnected, or too many unconfirmed).  Bounded;
  when full the oldest message is dropped and counted (``amqp.dropped.count``).
- *in flight*: sent, waiting for the broker's publisher confirm.  If the
  connection drops first they go back to the front of the buffer and are sent
  again after reconnecting, so a message is delivered at least once and in
  order unless it is dropped for space.

Twisted's :class:`~twisted.application.internet.ClientService` keeps the
connection (reconnecting with capped, jittered exponential backoff), built by
:func:`stor.core.reconnect.reconnecting` so its line per attempt stays out of
stor's log; each
connection is pika's Twisted adapter, which opens a confirm-mode channel and
declares the exchange before anything is sent.  The log gets one warning per
outage and one line when the connection is back, never a line per attempt.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.twisted_connection import TwistedChannel, TwistedProtocolConnection
from pika.exceptions import ConnectionClosedByBroker, ConnectionWrongStateError, NackError
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.config.amqp import DEFAULT_HEARTBEAT, AmqpConfig
from stor.core.metrics import Metrics
from stor.core.reactor import Reactor
from stor.core.reconnect import Outage, reconnecting

log = Logger()

DEFAULT_BUFFER_SIZE = 10_000
DEFAULT_MAX_IN_FLIGHT = 1_000
DEFAULT_HANDSHAKE_TIMEOUT = 15.0
"""pika's ``stack_timeout`` default; its Twisted adapter does not apply it, so stor does."""
CLOSE_TIMEOUT = 5.0
"""Seconds a clean close may take before the socket is simply dropped."""
MAX_DELAY = 30.0
BACKOFF = backoffPolicy(initialDelay=0.5, maxDelay=MAX_DELAY, factor=2.0)
"""Seconds to wait after ``n + 1`` consecutive failures: 0.5 s doubling up to 30 s, plus up to
1 s of jitter (Twisted's default) so a fleet of stor hosts does not reconnect to a restarted
broker in lock-step."""
STABLE = MAX_DELAY
"""A connection that lasted this long resets the backoff; a shorter one counts as a failure."""

DROPPED = "amqp.dropped.count"
NACKED = "amqp.nacked.count"
CONNECTED = "amqp.connect.count"
DISCONNECTED = "amqp.disconnect.count"


class NoPublisher:
    """Publishing disabled (no ``rabbitmq_uri``): routes call it without a flag."""

    def publish(self, sha: str) -> None:
        pass


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


def broker_close_reason(connection: TwistedProtocolConnection) -> ConnectionClosedByBroker | None:
    """Why the broker closed ``connection`` (403 bad login, 530 no vhost, 320 shutdown…), if it did.

    pika's Twisted adapter has no public way to tell: ``ready`` fails with
    ``AMQPConnectionError(1)``, and ``closed`` fires with the clean TCP close
    that follows ``Connection.Close``, which pika 1.3/1.4 writes over the
    reason.  So this reads pika's private ``_impl._error`` (call it before
    pika sees the connection lost); test_publisher's
    ``test_a_refused_login_is_logged_with_the_brokers_reason_and_backs_off``
    fails if pika changes.
    """
    error = getattr(getattr(connection, "_impl", None), "_error", None)
    return error if isinstance(error, ConnectionClosedByBroker) else None


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


class _Connection(TwistedProtocolConnection):
    """pika's Twisted connection, made ready to publish, that says why it ended.

    ``opened`` fires with a confirm-mode channel once the exchange is declared
    (never, if that fails); ``gone`` fires once the socket is closed, ``why``
    then holds the reason to log.
    """

    def __init__(self, params: pika.ConnectionParameters, reactor: Reactor, exchange: str) -> None:
        super().__init__(params, custom_reactor=reactor)
        self._params = params
        self._reactor = reactor
        self._exchange = exchange
        self.opened: defer.Deferred[TwistedChannel] = defer.Deferred()
        self.gone: defer.Deferred[None] = defer.Deferred()
        self.why: BaseException | None = None

    def connectionMade(self) -> None:
        heartbeat = self._params.heartbeat  # None or a callable: the broker's proposal
        seconds = heartbeat if isinstance(heartbeat, (int, float)) else DEFAULT_HEARTBEAT
        _limit_unacknowledged_time(self.transport, seconds * 2)
        defer.ensureDeferred(self._open())

    async def _open(self) -> None:
        """Handshake, channel, exchange, confirms; cut off if the broker never answers
        (pika's ``stack_timeout`` is not applied by its Twisted adapter)."""
        timeout = self._params.stack_timeout or DEFAULT_HANDSHAKE_TIMEOUT
        watchdog = self._reactor.callLater(
            timeout, self.fail, HandshakeTimeout(f"no AMQP handshake within {timeout:g}s"))
        try:
            await self.ready
            channel = await self.channel()
            await channel.exchange_declare(exchange=self._exchange, exchange_type="topic",
                                           durable=True)
            await channel.confirm_delivery()
        except Exception as e:
            self.fail(e)
            return
        finally:
            if watchdog.active():
                watchdog.cancel()
        self.opened.callback(channel)

    def fail(self, why: Exception) -> None:
        """Drop the socket now; the first reason given is the one reported."""
        self.why = self.why or why
        if self.connected:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.connected = False
        self.why = self.why or broker_close_reason(self) or reason.value
        super().connectionLost(reason)
        self.gone.callback(None)


class _Factory(protocol.Factory):
    """One :class:`_Connection` per attempt (its "Starting factory" lines are dropped as
    noise: :mod:`stor.core.reconnect`)."""

    def __init__(self, build: Callable[[], protocol.Protocol]) -> None:
        self.build = build

    def buildProtocol(self, addr: object) -> protocol.Protocol:
        return self.build()


class AmqpPublisher(Service):
    """Publishes SHAs to a topic exchange over one reconnecting AMQP connection.

    ``connected`` is true while a confirm-mode channel is open; ``buffered``
    and ``in_flight`` count the messages waiting to be sent and to be
    confirmed, ``dropped`` those lost for buffer space.  ``backoff(n)`` is the
    delay after ``n + 1`` consecutive failures (a connection that did not last
    :data:`STABLE` seconds counts as one, so a broker that accepts TCP and
    then refuses stor backs off too).
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
        backoff: Callable[[int], float] = BACKOFF,
        endpoint: IStreamClientEndpoint | None = None,
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
        self._where = f"{params.host}:{params.port}/{params.virtual_host.lstrip('/')}"
        self._client = reconnecting(
            endpoint or broker_endpoint(params, reactor), _Factory(self._new_connection),
            retry=lambda _attempt: backoff(max(self._failures - 1, 0)), clock=reactor,
            failed=self._unreachable, name=f"AMQP {self._where}",
        )

        self._buffer: deque[bytes] = deque()
        self._in_flight: dict[int, bytes] = {}  # insertion order = publish order
        self._sequence = itertools.count()
        self._connection: _Connection | None = None
        self._channel: TwistedChannel | None = None
        self._opened_at: float | None = None  # when the current connection's channel opened
        self._failures = 0  # consecutive, for the backoff
        self._down = Outage(reactor)  # the outage the log has warned about
        self._overflowing = False
        self.dropped = 0

    # -- what the HTTP layer and operators see ------------------------------

    @property
    def connected(self) -> bool:
        return self._channel is not None

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
            self._buffer.append(sha.encode("utf-8", "replace"))
            self._trim()
            self._flush()
        except Exception:  # a publish must never fail a GET; the log says why
            log.failure("AMQP publish failed")

    # -- the messages ----------------------------------------------------------

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
            log.warn("AMQP buffer full ({size} messages): dropping the oldest",
                     size=self._buffer_size)

    def _flush(self) -> None:
        """Send buffered messages while a channel is open and the confirm window has room."""
        while (self._channel is not None and self._buffer
               and len(self._in_flight) < self._max_in_flight):
            self._send(self._channel, self._buffer.popleft())

    def _send(self, channel: TwistedChannel, body: bytes) -> None:
        tag = next(self._sequence)
        self._in_flight[tag] = body
        try:
            d = channel.basic_publish(self._exchange, self._routing_key, body)
        except Exception as e:  # pika refused: the channel is closing; reconnect, resend later
            self._channel = None
            if self._connection is not None:
                self._connection.fail(e)
            return
        d.addCallbacks(self._confirmed, self._unconfirmed, callbackArgs=(tag,), errbackArgs=(tag,))

    def _confirmed(self, _ack: object, tag: int) -> None:
        self._in_flight.pop(tag, None)
        self._flush()

    def _unconfirmed(self, failure: Failure, tag: int) -> None:
        """A nack loses the message (counted); other errors mean the channel closed."""
        if failure.check(NackError) and self._in_flight.pop(tag, None) is not None:
            self._metrics.incr(NACKED)
            log.warn("AMQP broker nacked a message")
            self._flush()
        # ChannelClosed & co: the message goes back to the buffer when the channel is gone.

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
        self._down.forget()
        self._client.startService()

    def stopService(self) -> defer.Deferred[None]:
        """Stop reconnecting and close the connection; fires once the socket is closed."""
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        connection, channel = self._connection, self._channel
        self._channel = None  # nothing more is sent; confirms may still arrive until the close
        watchdog = self._reactor.callLater(CLOSE_TIMEOUT, self._abort)
        try:
            if connection is not None and channel is not None:
                try:
                    connection.close()  # the broker sees a normal close
                except ConnectionWrongStateError:
                    pass  # already closing: just wait for it
                await connection.gone
            await self._client.stopService()
        finally:
            if watchdog.active():
                watchdog.cancel()
        self._requeue_in_flight()  # kept for a later startService
        log.info("AMQP publisher stopped; {unsent} messages unsent", unsent=len(self._buffer))

    def _abort(self) -> None:
        if self._connection is not None:
            self._connection.fail(TimeoutError(f"no clean close within {CLOSE_TIMEOUT:g}s"))

    def _new_connection(self) -> _Connection:
        connection = self._connection = _Connection(self._params, self._reactor, self._exchange)
        connection.opened.addCallback(self._opened)
        connection.gone.addCallback(self._lost, connection)
        return connection

    def _opened(self, channel: TwistedChannel) -> None:
        """A connection is ready: send what waited."""
        if not self.running:  # stopped during the handshake: ClientService is closing it
            return
        self._channel = channel
        self._opened_at = self._reactor.seconds()
        self._overflowing = False
        channel.on_closed.addCallback(self._channel_closed, channel)
        self._metrics.incr(CONNECTED)
        lasted = self._down.end()
        log.info("AMQP connected to {where}, exchange {exchange!r}{after}; {count} to send",
                 where=self._where, exchange=self._exchange, count=len(self._buffer),
                 after="" if lasted is None else f", again after {lasted:.1f}s")
        self._flush()

    def _channel_closed(self, reason: Exception, channel: TwistedChannel) -> None:
        """A channel closed alone (e.g. a 404 on publish): reconnect, to declare again."""
        if channel is self._channel and self._connection is not None:
            self._channel = None
            self._connection.fail(reason)

    def _lost(self, _: None, connection: _Connection) -> None:
        """``connection``'s socket is closed: keep its messages, count the failure, say why."""
        self._connection = self._channel = None
        self._requeue_in_flight()
        opened_at, self._opened_at = self._opened_at, None
        if opened_at is not None:
            self._metrics.incr(DISCONNECTED)
        if not self.running:
            return
        stable = opened_at is not None and self._reactor.seconds() - opened_at >= STABLE
        self._failures = 1 if stable else self._failures + 1
        self._outage("lost the connection to" if opened_at is not None else "cannot connect to",
                     connection.why)

    def _unreachable(self, failure: Failure) -> None:
        """A connection attempt failed before TCP was up (refused, timed out, no such host)."""
        if self.running:
            self._failures += 1
            self._outage("cannot connect to", failure.value)

    def _outage(self, what: str, why: BaseException | None) -> None:
        """Warn at the start of an outage only: a broker down for hours logs once."""
        if self._down.begin():
            log.warn("AMQP {what} {where}: {reason}; buffering and reconnecting", what=what,
                     where=self._where, reason=f"{type(why).__name__}: {why}")
