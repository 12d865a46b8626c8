"""A response body into a blocking writer (a ``.part`` file, a hasher), with back-pressure.

The body arrives on the reactor; writing and hashing happen in a thread, one
batch at a time, in order.  When more than :data:`HIGH_WATER` bytes wait for
the thread, the socket is paused, so memory stays flat however fast the
network is and however slow the disk.
"""

from collections.abc import Callable
from typing import Any, Protocol as Typing, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from stor.client.errors import ItemFailed, LocalFailure, Transient
from stor.client.threads import in_thread
from stor.core.reactor import Connection, Reactor

HIGH_WATER = 4 * 1024 * 1024
"""Bytes waiting for the writer thread above which the socket is paused."""

T = TypeVar("T")


class Writer(Typing):
    """What a :class:`Sink` drives: a blocking, hashing destination (see ``localfiles``)."""

    size: int

    def write(self, chunks: list[bytes]) -> None: ...
    def reset(self) -> None: ...
    def hexdigest(self) -> str: ...


class Sink:
    """Feeds chunks to a :class:`Writer` in a thread, in order, one batch in flight."""

    def __init__(self, reactor: Reactor, writer: Writer,
                 on_bytes: Callable[[int], None] = lambda n: None) -> None:
        self._reactor = reactor
        self._writer = writer
        self._on_bytes = on_bytes
        self._queue: list[bytes] = []
        self._pending = 0
        self._busy = False
        self._error: Failure | None = None
        self._idle_waiters: list[Deferred[None]] = []
        self.size = writer.size
        """Bytes fed so far (written or on their way to the writer)."""

    @property
    def pending(self) -> int:
        """Bytes fed and not yet written."""
        return self._pending

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            return
        self._queue.append(data)
        self._pending += len(data)
        self.size += len(data)
        self._on_bytes(len(data))
        self._next()

    def idle(self) -> "Deferred[None]":
        """Fires when everything fed is written (or with the writer's error)."""
        if self._error is not None:
            return _fail(self._error)
        if not self._busy and not self._queue:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread once the writes before it are done."""
        await self.idle()
        try:
            return await in_thread(self._reactor, fn, *args)
        except OSError as e:
            raise LocalFailure.from_os_error(e) from None

    async def reset(self) -> None:
        """Drop everything: the next bytes fed are byte zero of the file."""
        await self.call(self._writer.reset)
        self.size = 0

    async def hexdigest(self) -> str:
        return await self.call(self._writer.hexdigest)

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue, []
        self._busy = True
        d = in_thread(self._reactor, self._writer.write, batch)
        d.addBoth(self._written, sum(len(c) for c in batch))

    def _written(self, result: object, n: int) -> None:
        self._busy = False
        self._pending -= n
        if isinstance(result, Failure):
            self._error = _as_item_failure(result)
            self._queue = []
            self._pending = 0
        else:
            self._next()
        if self._error is not None or (not self._busy and not self._queue):
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                if self._error is not None:
                    d.errback(self._error)
                else:
                    d.callback(None)


class IdleTimer:
    """Calls ``on_idle`` when ``kick`` was not called for ``seconds``."""

    def __init__(self, reactor: Reactor, seconds: float, on_idle: Callable[[], None]) -> None:
        self._reactor = reactor
        self._seconds = seconds
        self._on_idle = on_idle
        self._call: Any = None
        self.fired = False

    def start(self) -> None:
        self.stop()
        self._call = self._reactor.callLater(self._seconds, self._fire)

    def kick(self) -> None:
        if self._call is not None and self._call.active():
            self._call.reset(self._seconds)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.fired = True
        self._on_idle()


class BodyReceiver(Protocol):
    """Delivers a response body into a :class:`Sink`, pausing the socket when it lags.

    ``done`` fires when the body is complete, or fails with :class:`Transient`
    (connection lost, nothing received for ``timeout`` seconds) or the sink's
    :class:`LocalFailure`.
    """

    transport: Connection  # the response body's connection, set before dataReceived

    def __init__(self, reactor: Reactor, sink: Sink, timeout: float) -> None:
        self._sink = sink
        self._timeout = timeout
        self._paused = False
        self._finished = False
        self._timer = IdleTimer(reactor, timeout, self._give_up)
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self._timer.start()

    def dataReceived(self, data: bytes) -> None:
        self._timer.kick()
        self._sink.feed(data)
        if self._sink.failed:
            self.transport.stopProducing()
        elif self._sink.pending > HIGH_WATER and not self._paused:
            self._paused = True
            self._timer.stop()  # our own pause is not the server's silence
            self.transport.pauseProducing()
            self._sink.idle().addBoth(self._resume)

    def _resume(self, result: object) -> None:
        self._paused = False
        if self._finished:
            return
        if isinstance(result, Failure):
            self.transport.stopProducing()
            return
        self._timer.start()
        self.transport.resumeProducing()

    def _give_up(self) -> None:
        self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._finished = True
        self._timer.stop()
        if self._timer.fired:
            self.done.errback(Transient(f"no data for {self._timeout:g} s"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(Transient("connection lost"))


async def receive(reactor: Reactor, response: IResponse, sink: Sink, timeout: float) -> None:
    """Stream ``response``'s body into ``sink`` and wait until it is all written."""
    receiver = BodyReceiver(reactor, sink, timeout)
    response.deliverBody(receiver)
    try:
        await receiver.done
    finally:
        await sink.idle()  # the writer's failure (a full disk) wins over a lost connection


class _Text(Protocol):
    """Collects up to ``limit`` bytes of a body, then hangs up on the rest."""

    transport: Connection  # set before dataReceived

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self._limit == 0:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if len(self._data) < self._limit:
            self._data += data[: self._limit - len(self._data)]
            if len(self._data) >= self._limit:
                self.transport.stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self._data)


def read_text(response: IResponse, limit: int = 4096) -> "Deferred[str]":
    """The start of a (short, error) body as text; a long body is cut, not read."""
    proto = _Text(limit)
    response.deliverBody(proto)
    return proto.done.addCallback(lambda b: b.decode("utf-8", "replace").strip())


def discard(response: IResponse) -> "Deferred[str]":
    """Hang up on a body we do not want (the connection is not reused)."""
    return read_text(response, limit=0)


def _as_item_failure(failure: Failure) -> Failure:
    if failure.check(ItemFailed):
        return failure
    if isinstance(failure.value, OSError):
        return Failure(LocalFailure.from_os_error(failure.value))
    return failure


def _fail(failure: Failure) -> "Deferred[None]":
    d: Deferred[None] = Deferred()
    d.errback(failure)
    return d
