"""A file on disk as a request body: read in a thread, one piece ahead, with back-pressure.

Twisted's ``FileBodyProducer`` reads on the reactor thread; here every read
runs in a thread while the previous piece is on the wire, and the transport's
``pauseProducing`` holds the next piece back, so at most two pieces of any
upload are in memory.
"""

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.internet.interfaces import IConsumer
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from stor.client.localfiles import CHUNK, Reader
from stor.client.threads import in_thread
from stor.core.reactor import Reactor


@implementer(IBodyProducer)
class FileProducer:
    """Sends all ``reader.size`` bytes of an open :class:`Reader`.

    ``on_chunk`` is called with the size of every piece handed to the
    transport (progress, and the upload's idle timer).
    """

    def __init__(self, reactor: Reactor, reader: Reader,
                 on_chunk: Callable[[int], None] = lambda n: None) -> None:
        self._reactor = reactor
        self._reader = reader
        self._on_chunk = on_chunk
        self.length = reader.size
        self._consumer: IConsumer | None = None
        self._finished: Deferred[None] | None = None
        self._ready: bytes | None = None
        self._reading = False
        self._paused = False
        self._stopped = False
        self._sent = 0

    def startProducing(self, consumer: IConsumer) -> "Deferred[None]":
        if self.length == 0:
            return succeed(None)
        self._consumer = consumer
        self._finished = Deferred()
        self._pump()
        return self._finished

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        """The request is abandoned: read no more; ``startProducing``'s Deferred never fires."""
        self._stopped = True
        self._ready = None

    def _pump(self) -> None:
        if self._stopped:
            return
        if self._ready is not None and not self._paused:
            data, self._ready = self._ready, None
            assert self._consumer is not None
            self._consumer.write(data)
            self._sent += len(data)
            self._on_chunk(len(data))
            if self._sent == self.length:
                assert self._finished is not None
                self._finished.callback(None)
                return
        if self._ready is None and not self._reading and self._reader.position < self.length:
            self._reading = True
            in_thread(self._reactor, self._reader.read, CHUNK).addCallbacks(self._read, self._failed)

    def _read(self, data: bytes) -> None:
        self._reading = False
        if self._stopped:
            return
        self._ready = data
        self._pump()

    def close(self) -> "Deferred[None]":
        """Close the file (whatever became of the request); safe during a read."""
        return in_thread(self._reactor, self._reader.close)

    def _failed(self, failure: Failure) -> None:
        self._reading = False
        if not self._stopped:
            self._stopped = True
            assert self._finished is not None
            self._finished.errback(failure)
