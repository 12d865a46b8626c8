"""A file on disk as a request body: read in a thread, one piece ahead, with back-pressure.

Twisted's ``FileBodyProducer`` reads on the reactor thread; here the shared
:class:`~stor.core.slices.VerifiedSlice` reads every piece in a thread while
the previous piece is on the wire (``read_ahead``), and the transport's
``pauseProducing`` holds the next piece back, so at most two pieces of any
upload are in memory.  The bytes are not checked against the SHA here: the
:class:`~stor.client.localfiles.Reader` hashes what it sends, and the server
refuses (412) a body that does not hash to its name.
"""

from collections.abc import Callable

from twisted.internet.defer import Deferred

from stor.client.localfiles import CHUNK, Reader
from stor.client.threads import in_thread
from stor.core.reactor import Reactor
from stor.core.slices import VerifiedSlice


def file_producer(reactor: Reactor, reader: Reader,
                  on_chunk: Callable[[int], None] = lambda n: None) -> VerifiedSlice:
    """A body of all ``reader.size`` bytes of an open :class:`Reader`.

    ``on_chunk`` is called with the size of every piece handed to the
    transport (progress, and the upload's idle timer).  The reader is closed
    by the caller (:func:`close_reader`) whatever became of the request.
    """
    return VerifiedSlice(_ReaderSource(reactor, reader), 0, reader.size, chunk=CHUNK,
                         read_ahead=True, on_chunk=on_chunk)


def close_reader(reactor: Reactor, reader: Reader) -> "Deferred[None]":
    """Close the file (whatever became of the request); safe during a read."""
    return in_thread(reactor, reader.close)


class _ReaderSource:
    """A :class:`Reader` read in the reactor's thread pool, piece after piece.

    The reader raises :class:`~stor.client.errors.FileChanged` itself when the
    file ends early, so the producer never sees a short source.
    """

    def __init__(self, reactor: Reactor, reader: Reader) -> None:
        self._reactor = reactor
        self._reader = reader

    def read_nowait(self, offset: int, size: int) -> None:
        return None  # every read goes to a thread

    def read(self, offset: int, size: int) -> "Deferred[bytes]":
        return in_thread(self._reactor, self._reader.read, size)

    def ended_early(self, offset: int) -> BaseException:
        return EOFError(f"{self._reader.path} ends at byte {offset}")

    def corrupt(self, actual: str) -> BaseException:  # no expected hash: never asked
        return ValueError(f"{self._reader.path} hashes to {actual}")

    def close(self) -> None:
        pass  # the reader closes after its last piece; close_reader does the rest
