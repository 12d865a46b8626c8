"""Body sources: what a read answers with, written to any ``IConsumer``.

The HTTP layer hands a consumer (the request) to :meth:`Body.write_to` and
gets a Deferred that fires when every byte is written, fails when the body
cannot be completed (the connection must then be cut: a short body must never
pass for a whole one), and stops the source when cancelled (the client went
away).  Sources: bytes in memory (a small file, already verified), an open
local file (:class:`FileBody`), and an S3 object
(:class:`stor.peers.s3.S3Object`).
"""

import hashlib
import os
from collections.abc import Callable
from typing import IO, Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from stor.core.errors import CorruptReplica, StorageFailure
from stor.fs import nowait

CHUNK = 256 * 1024

Runner = Callable[..., "Deferred[Any]"]


class Body(Protocol):
    """Something that can write itself to a consumer, once."""

    def write_to(self, consumer: IConsumer) -> "Deferred[None]": ...


class BytesBody:
    """A body already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def write_to(self, consumer: IConsumer) -> "Deferred[None]":
        consumer.write(self._data)
        return succeed(None)


@implementer(IPushProducer)
class FileBody:
    """``length`` bytes of an open file from ``offset``, streamed with back-pressure.

    The consumer pauses and resumes it as its send buffer fills and drains.
    Each chunk is read on the reactor only when the page cache already holds it
    (``RWF_NOWAIT``, see :mod:`stor.fs.nowait`); otherwise the read runs in the
    disk pool, so a slow disk never stalls the reactor.  Memory per download is
    one chunk.

    With ``verify`` (the SHA, for a whole-file answer) the bytes are hashed as
    they go and the last chunk is written only if the digest matches: on a
    mismatch the delivery fails with :class:`~stor.core.errors.CorruptReplica`
    and the client never receives a complete wrong file.
    """

    def __init__(self, f: IO[bytes], path: str, offset: int, length: int, run: Runner,
                 verify: str | None = None) -> None:
        self._file = f
        self._fd = f.fileno()
        self._path = path
        self._offset = offset
        self._remaining = length
        self._run = run
        self._verify = verify
        self._hash = hashlib.sha256() if verify else None
        self._consumer: IConsumer | None = None
        self._paused = False
        self._reading = False
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def write_to(self, consumer: IConsumer) -> "Deferred[None]":
        self._consumer = consumer
        consumer.registerProducer(self, True)
        self._pump()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The client went away (or the delivery was cancelled): close quietly."""
        if not self._stopped:
            self._stopped = True
            self._finish(CancelledError())

    def _pump(self) -> None:
        """Send cached chunks until paused; hand the first uncached read to a thread."""
        while not (self._reading or self._paused or self._stopped):
            size = min(CHUNK, self._remaining)
            try:
                data = nowait.read_at(self._fd, size, self._offset)
            except OSError as e:
                self._stop(StorageFailure(f"cannot read {self._path}: {e.strerror}"))
                return
            if data is None:
                self._reading = True
                self._run(os.pread, self._fd, size, self._offset).addCallbacks(
                    self._read, self._failed)
                return
            self._deliver(data)

    def _read(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._file.close()
            return
        self._deliver(data)
        self._pump()

    def _deliver(self, data: bytes) -> None:
        if not data:  # the file shrank under us: end the body short, never pad it
            self._stop(StorageFailure(f"{self._path} is shorter than its size"))
            return
        self._offset += len(data)
        self._remaining -= len(data)
        if self._hash is not None:
            self._hash.update(data)
            if self._remaining <= 0 and self._hash.hexdigest() != self._verify:
                self._stop(CorruptReplica(self._path, self._hash.hexdigest()))
                return
        assert self._consumer is not None
        self._consumer.write(data)
        if self._remaining <= 0:
            self._stop(None)

    def _failed(self, failure: Any) -> None:
        self._reading = False
        error = failure.value
        self._stop(StorageFailure(f"cannot read {self._path}: {getattr(error, 'strerror', error)}"))

    def _stop(self, error: BaseException | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._consumer is not None:
            self._consumer.unregisterProducer()
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        if not self._reading:
            self._file.close()
        if self._done.called:
            return
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(error)
