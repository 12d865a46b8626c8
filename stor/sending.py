"""Streaming a local file to a client with back-pressure.

The transport pauses and resumes :class:`FileProducer` as its send buffer
fills and drains; every ``read`` runs in the disk thread pool, so a slow disk
never stalls the reactor.  Memory per download is one chunk.
"""

from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

CHUNK = 256 * 1024

Runner = Callable[..., "Deferred[Any]"]


@implementer(IPushProducer)
class FileProducer:
    """Writes ``size`` bytes of an open file to a request, then fires :attr:`done`."""

    def __init__(self, f: IO[bytes], size: int, request: IRequest, run: Runner) -> None:
        self._file = f
        self._remaining = size
        self._request = request
        self._run = run
        self._paused = False
        self._reading = False
        self._stopped = False
        self.done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def start(self) -> "Deferred[None]":
        """Register with the request and begin; :attr:`done` fires at the end."""
        self._request.registerProducer(self, True)
        self._read()
        return self.done

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._read()

    def stopProducing(self) -> None:
        """The client went away (or the response was cancelled): close quietly."""
        if not self._stopped:
            self._stopped = True
            self._finish(CancelledError())

    def _read(self) -> None:
        if self._reading or self._paused or self._stopped:
            return
        self._reading = True
        size = min(CHUNK, self._remaining)
        self._run(self._file.read, size).addCallbacks(self._got, self._failed)

    def _got(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            self._file.close()
            return
        if not data:  # the file shrank under us: end the body short, never pad it
            self._stop(OSError("file shorter than its size"))
            return
        self._remaining -= len(data)
        self._request.write(data)
        if self._remaining <= 0:
            self._stop(None)
        else:
            self._read()

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
