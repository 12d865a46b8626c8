"""One producer for verified file slices: downloads, S3 PUT bodies, the client's uploads.

A download (:class:`stor.disk.body.FileBody`), a PUT to S3 (:mod:`stor.s3.put`)
and ``stor put`` (:mod:`stor.client.upload`) all stream ``length`` bytes of a
file to a consumer that pauses and resumes them as its send buffer fills and
drains.  They share one state machine, :class:`VerifiedSlice`, and differ only
in where the bytes come from (a :class:`SliceSource`):

- *Back-pressure*: a chunk is written only while the consumer is not paused;
  a new read starts only when the last chunk has been written (so memory is
  one chunk per stream), or, with ``read_ahead``, while the previous chunk is
  still on the wire (two chunks: the client's throughput depends on it).
- *Off the reactor*: a chunk is read by :meth:`SliceSource.read_nowait` when
  that cannot wait (the page cache holds it), else by :meth:`SliceSource.read`
  in a thread; the producer never blocks.
- *Verified*: with ``expected`` (a SHA-256), the bytes are hashed as they are
  read and the chunk that completes the slice is written only if the digest
  matches; otherwise the slice fails with the source's
  :meth:`~SliceSource.corrupt` error and the consumer never receives a
  complete wrong file (the caller cuts the connection or aborts the request).
- *Short*: a source that ends before ``length`` fails the slice with its
  :meth:`~SliceSource.ended_early` error; a short body never passes for a whole one.

It is an ``IBodyProducer`` (``length``, ``startProducing``) for Twisted's HTTP
client, and :meth:`VerifiedSlice.write_to` registers it as a push producer on
a server's request, like the producers of ``twisted.web.static``.
"""

import hashlib
from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


class SliceSource(Protocol):
    """Where a slice's bytes come from.

    The producer asks for each offset once, in order, one read at a time, and
    calls :meth:`close` once, when the slice is over and no read is running.
    """

    def read_nowait(self, offset: int, size: int) -> bytes | None:
        """Up to ``size`` bytes at ``offset`` if they can be had without waiting;
        None: they cannot (use :meth:`read`).  An exception fails the slice."""

    def read(self, offset: int, size: int) -> "Deferred[bytes]":
        """Up to ``size`` bytes at ``offset``, read off the reactor thread (``b""``:
        the source ended).  A failure fails the slice with its error."""

    def ended_early(self, offset: int) -> BaseException:
        """The error for a source that ends at ``offset``, before the slice's end."""

    def corrupt(self, actual: str) -> BaseException:
        """The error for a slice whose bytes hash to ``actual``, not to ``expected``."""

    def close(self) -> None:
        """The slice is over (whole, failed or stopped): release the source, without waiting."""


@implementer(IBodyProducer, IPushProducer)
class VerifiedSlice:
    """``length`` bytes of ``source`` from ``offset``, streamed with back-pressure and
    verified against ``expected`` when given (see the module docstring).

    ``on_chunk`` is called with the size of every chunk handed to the consumer
    (progress, an idle timer); it may be replaced before the slice starts.
    :attr:`failure` holds the error that ended the slice, if one did.
    """

    def __init__(self, source: SliceSource, offset: int, length: int, *, chunk: int,
                 expected: str | None = None, read_ahead: bool = False,
                 on_chunk: Callable[[int], object] = lambda n: None) -> None:
        self.length = length
        self.on_chunk = on_chunk
        self.failure: BaseException | None = None
        self._source = source
        self._offset = offset
        self._chunk = chunk
        self._expected = expected
        self._hash = hashlib.sha256() if expected is not None else None
        self._read_ahead = read_ahead
        self._read = 0  # bytes read (and hashed) so far
        self._written = 0
        self._ready: bytes | None = None  # read, not yet written (the consumer is paused)
        self._consumer: IConsumer | None = None
        self._pushed = False  # registered by write_to: unregister at the end, report a stop
        self._paused = self._reading = self._ended = self._closed = False
        self._done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    # -- the two ways to start ---------------------------------------------------

    def startProducing(self, consumer: IConsumer) -> "Deferred[None]":
        """``IBodyProducer``: fires once every byte is written, fails when the slice
        cannot be completed; never fires after :meth:`stopProducing`."""
        self._consumer = consumer
        if self.length == 0:
            self._accept(b"")  # nothing to send, but an expected hash still to check
        else:
            self._pump()
        return self._done

    def write_to(self, consumer: IConsumer) -> "Deferred[None]":
        """Register as ``consumer``'s push producer and stream; the Deferred fails
        with ``CancelledError`` when the consumer stops it (the client went away)."""
        self._pushed = True
        consumer.registerProducer(self, True)
        return self.startProducing(consumer)

    # -- IPushProducer -----------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The consumer is gone (a closed connection, an aborted request): read no more."""
        self._end(CancelledError() if self._pushed else None, fire=self._pushed,
                  unregister=False)

    # -- the state machine --------------------------------------------------------

    def _pump(self) -> None:
        """Write what is ready, read what may be read, until paused or waiting for a thread."""
        while not self._ended:
            if self._ready is not None:
                if self._paused:
                    return
                ready, self._ready = self._ready, None
                self._write(ready)
                continue
            if (self._reading or self._read >= self.length
                    or (self._paused and not self._read_ahead)):
                return
            size = min(self._chunk, self.length - self._read)
            try:
                data = self._source.read_nowait(self._offset + self._read, size)
            except Exception as e:
                self._end(e)
                return
            if data is None:
                self._reading = True
                self._source.read(self._offset + self._read, size).addCallbacks(
                    self._got, self._failed)
                return
            self._accept(data)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._ended:
            self._close()
            return
        self._accept(data)
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if self._ended:
            self._close()
            return
        self._end(failure)

    def _accept(self, data: bytes) -> None:
        """A chunk read: counted, hashed, and kept to write, unless it ends the slice wrong."""
        if not data and self.length > 0:
            self._end(self._source.ended_early(self._offset + self._read))
            return
        self._read += len(data)
        if self._hash is not None:
            self._hash.update(data)
            if self._read >= self.length and self._hash.hexdigest() != self._expected:
                self._end(self._source.corrupt(self._hash.hexdigest()))
                return
        if self._read >= self.length:
            self._close()  # every byte is read: the file can go before the last write
        if data:
            self._ready = data
        elif self.length == 0:
            self._end(None)

    def _write(self, data: bytes) -> None:
        assert self._consumer is not None
        self._consumer.write(data)
        self._written += len(data)
        self.on_chunk(len(data))
        if self._written >= self.length:
            self._end(None)

    def _end(self, outcome: "BaseException | Failure | None", fire: bool = True,
             unregister: bool = True) -> None:
        """The slice is over: release the source (once no read runs) and say how it went."""
        if self._ended:
            return
        self._ended = True
        self._ready = None
        if outcome is not None:
            self.failure = outcome.value if isinstance(outcome, Failure) else outcome
        if not self._reading:
            self._close()
        if self._pushed and unregister and self._consumer is not None:
            self._consumer.unregisterProducer()
        if not fire or self._done.called:
            return
        if outcome is None:
            self._done.callback(None)
        else:
            self._done.errback(outcome)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._source.close()

