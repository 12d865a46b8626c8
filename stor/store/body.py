"""Streaming a local file (or a range of it) to a client with back-pressure.

The transport pauses and resumes :class:`FileProducer` as its send buffer
fills and drains.  Each chunk is read on the reactor only when the page cache
already holds it (``RWF_NOWAIT``, see :mod:`stor.nowait`); otherwise the read
runs in the disk pool, so a slow disk never stalls the reactor.  Memory per
download is one chunk.
"""

import os
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

from stor.fs import nowait

CHUNK = 256 * 1024

Runner = Callable[..., "Deferred[Any]"]


@implementer(IPushProducer)
class FileProducer:
    """Writes ``length`` bytes of an open file from ``offset`` to a request, then
    fires :attr:`done` (with an error if the file ends early or cannot be read)."""

    def __init__(self, f: IO[bytes], length: int, request: IRequest, run: Runner,
                 offset: int = 0) -> None:
        self._file = f
        self._fd = f.fileno()
        self._offset = offset
        self._remaining = length
        self._request = request
        self._run = run
        self._paused = False
        self._reading = False
        self._stopped = False
        self.done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def start(self) -> "Deferred[None]":
        """Register with the request and begin; :attr:`done` fires at the end."""
        self._request.registerProducer(self, True)
        self._pump()
        return self.done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The client went away (or the response was cancelled): close quietly."""
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
                self._stop(e)
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
            self._stop(OSError("file shorter than its size"))
            return
        self._offset += len(data)
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining <= 0:
            self._stop(None)

    def _failed(self, failure: Any) -> None:
        self._reading = False
        self._stop(failure.value)

    def _stop(self, error: BaseException | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._request.unregisterProducer()
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        if not self._reading:
            self._file.close()
        if self.done.called:
            return
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)
