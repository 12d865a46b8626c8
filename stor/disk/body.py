"""Body sources: what a read answers with, written to any ``IConsumer``.

The HTTP layer hands a consumer (the request) to :meth:`Body.write_to` and
gets a Deferred that fires when every byte is written, fails when the body
cannot be completed (the connection must then be cut: a short body must never
pass for a whole one), and stops the source when cancelled (the client went
away).  Sources: bytes in memory (a small file, already verified), an open
local file (:class:`FileBody`, streamed by the shared
:class:`~stor.core.slices.VerifiedSlice`), and an S3 object
(:class:`stor.s3.read.S3Object`).
"""

import hashlib
import os
from collections.abc import Callable
from typing import IO, Any, NoReturn, Protocol

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from stor.core.errors import CorruptReplica, StorageFailure
from stor.core.slices import VerifiedSlice
from stor.disk import nowait

CHUNK = 256 * 1024

Runner = Callable[..., "Deferred[Any]"]
OnFault = Callable[[str, BaseException], None]
"""Told (on the reactor) of a replica that failed to read and was left for its twin:
its path and the error."""


class ReplicaReadFailed(StorageFailure):
    """A replica failed to read and its twin could not take over: ``fault`` is the
    replica's path and error (a read fault to report)."""

    def __init__(self, message: str, fault: tuple[str, OSError]) -> None:
        super().__init__(message)
        self.fault = fault


class Body(Protocol):
    """Something that can write itself to a consumer, once."""

    def write_to(self, consumer: IConsumer) -> "Deferred[None]": ...


class SendTarget(Protocol):
    """A connection the kernel can send a file to directly (``sendfile``), offered by
    the HTTP layer for a plain TCP connection (:class:`stor.http.channel.SocketSendfile`)."""

    def begin(self, producer: IPushProducer) -> None:
        """Send the answer's headers; ``producer.resumeProducing`` once they are out."""

    def send(self, fd: int, offset: int, count: int) -> int | None:
        """Up to ``count`` bytes of ``fd`` from ``offset`` sent now; None: would block
        (``producer.resumeProducing`` is called when it can take more)."""

    def end(self) -> None:
        """The body is sent (or given up)."""


class BytesBody:
    """A body already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def write_to(self, consumer: IConsumer) -> "Deferred[None]":
        consumer.write(self._data)
        return succeed(None)


class FileBody:
    """``length`` bytes of an open file from ``offset``, streamed with back-pressure.

    Streamed by the shared :class:`~stor.core.slices.VerifiedSlice`: the
    consumer pauses and resumes it as its send buffer fills and drains.  Each
    chunk is read on the reactor only when the page cache already holds it
    (``RWF_NOWAIT``, see :mod:`stor.disk.nowait`); otherwise the read runs in
    the disk pool, so a slow disk never stalls the reactor.  Memory per
    download is one chunk.

    With ``verify`` (the SHA, for a whole-file answer) the bytes are hashed as
    they go and the last chunk is written only if the digest matches: on a
    mismatch the delivery fails with :class:`~stor.core.errors.CorruptReplica`
    and the client never receives a complete wrong file.

    With ``twin`` (the path of the other replica) a read that fails goes on from
    the twin, at the same offset, for the rest of the body (a twin of another
    size is not used); ``on_fault`` is told.  The digest covers every byte
    sent, whichever replica it came from.  Without a usable twin the delivery
    fails (the connection is cut).
    """

    def __init__(self, f: IO[bytes], path: str, offset: int, length: int, run: Runner,
                 verify: str | None = None, *, size: int | None = None,
                 twin: str | None = None, on_fault: OnFault | None = None) -> None:
        self._file = f
        self._path = path
        self._offset = offset
        self._length = length
        self._run = run
        self._verify = verify
        self._size = offset + length if size is None else size
        self._twin = twin
        self._on_fault = on_fault

    def write_to(self, consumer: IConsumer, sendfile: SendTarget | None = None,
                 call_from_thread: Callable[..., object] | None = None) -> "Deferred[None]":
        """Stream the body to ``consumer``; with ``sendfile`` (a whole, large file) the
        kernel sends it, verified by a thread (:class:`SendfileBody`)."""
        if (sendfile is not None and call_from_thread is not None and self._verify
                and self._offset == 0 and self._length >= SENDFILE_MIN):
            return SendfileBody(self._file, self._path, self._length, self._run,
                                self._verify, call_from_thread, twin=self._twin,
                                on_fault=self._on_fault).write_to(sendfile)
        source = LocalFileSource(self._file, self._path, self._run, size=self._size,
                                 twin=self._twin, on_fault=self._on_fault)
        return VerifiedSlice(source, self._offset, self._length, chunk=CHUNK,
                             expected=self._verify).write_to(consumer)


class LocalFileSource:
    """A committed local file as a :class:`~stor.core.slices.SliceSource`: the page
    cache on the reactor, the disk in the pool; failures are :class:`StorageFailure`,
    a wrong digest :class:`CorruptReplica`."""

    def __init__(self, f: IO[bytes], path: str, run: Runner, *, size: int | None = None,
                 twin: str | None = None, on_fault: OnFault | None = None) -> None:
        self._file = f
        self._fd = f.fileno()
        self._path = path
        self._run = run
        self._size = size
        self._twin = twin
        self._on_fault = on_fault
        self._left: list[IO[bytes]] = []  # replicas left for the twin, closed at the end

    def read_nowait(self, offset: int, size: int) -> bytes | None:
        try:
            return nowait.read_at(self._fd, size, offset)
        except OSError:
            return None  # the read in the pool decides (and tries the twin)

    def read(self, offset: int, size: int) -> "Deferred[bytes]":
        d: Deferred[tuple[bytes, tuple[str, OSError] | None]] = self._run(
            self._read_blocking, offset, size)
        return d.addCallbacks(self._got, self._read_failed)

    def _read_blocking(self, offset: int, size: int) -> "tuple[bytes, tuple[str, OSError] | None]":
        """Blocking: ``size`` bytes at ``offset``, from the twin (for good) when the replica
        fails; also the failure left behind, for :meth:`_got` to report."""
        try:
            return os.pread(self._fd, size, offset), None
        except OSError as e:
            if self._twin is None or self._size is None:
                raise
            failed = (self._path, e)
        twin = open_twin(self._twin, self._size, *failed)
        try:
            data = os.pread(twin.fileno(), size, offset)
        except OSError as e2:
            twin.close()
            raise ReplicaReadFailed(f"cannot read {self._path}: {failed[1].strerror}; nor its "
                                    f"twin {self._twin}: {e2.strerror}", failed) from None
        self._left.append(self._file)
        self._file, self._fd, self._path, self._twin = twin, twin.fileno(), self._twin, None
        return data, failed

    def _got(self, result: "tuple[bytes, tuple[str, OSError] | None]") -> bytes:
        data, failed = result
        if failed is not None and self._on_fault is not None:
            self._on_fault(*failed)
        return data

    def _read_failed(self, failure: Failure) -> NoReturn:
        raise _reported(failure, self._path, self._on_fault)

    def ended_early(self, offset: int) -> BaseException:
        # the file shrank under us: end the body short, never pad it
        return StorageFailure(f"{self._path} is shorter than its size")

    def corrupt(self, actual: str) -> BaseException:
        return CorruptReplica(self._path, actual)

    def close(self) -> None:
        for f in [*self._left, self._file]:
            f.close()  # a read-only file: closing it does not wait for the disk


def _reported(error: "BaseException | Failure", path: str, on_fault: OnFault | None) -> BaseException:
    """A failed read of a body as the delivery's error, its read fault told to ``on_fault``."""
    if isinstance(error, Failure):
        error = error.value if error.value is not None else StorageFailure(str(error))
    if isinstance(error, ReplicaReadFailed):
        if on_fault is not None:
            on_fault(*error.fault)
        return error
    if isinstance(error, StorageFailure):
        return error
    if isinstance(error, OSError):
        if on_fault is not None:
            on_fault(path, error)
        return StorageFailure(f"cannot read {path}: {error.strerror}")
    return StorageFailure(f"cannot read {path}: {error}")


def open_twin(twin: str, size: int, path: str, error: OSError) -> IO[bytes]:
    """Blocking: the twin replica to go on from after ``path`` failed with ``error``;
    :class:`ReplicaReadFailed` naming both when it cannot be opened or is not ``size`` bytes."""
    why = f"cannot read {path}: {error.strerror}"
    try:
        f = open(twin, "rb", buffering=0)
    except OSError as e:
        raise ReplicaReadFailed(f"{why}; nor its twin {twin}: {e.strerror}",
                                (path, error)) from None
    try:
        twin_size = os.fstat(f.fileno()).st_size
    except OSError as e:
        f.close()
        raise ReplicaReadFailed(f"{why}; nor its twin {twin}: {e.strerror}",
                                (path, error)) from None
    if twin_size != size:
        f.close()
        raise ReplicaReadFailed(f"{why}; its twin {twin} is {twin_size} bytes, not {size}",
                                (path, error))
    return f


SENDFILE_MIN = 1024 * 1024
"""Whole files at least this large go by ``sendfile`` when the connection allows."""
TAIL = 256 * 1024
"""The end of the file held back until the whole file is known to hash to its name."""
PROGRESS_STEP = 8 * 1024 * 1024
"""The hashing thread tells the sender every time it is this much further."""
HASH_READ = 2 * 1024 * 1024
"""The hashing thread's reads: large, so it seldom takes the interpreter lock."""
SEND_BUDGET = 8 * 1024 * 1024
"""Bytes sent in one turn of the reactor, before other connections get theirs."""


def _step(offset: int, size: int) -> int:
    """How far the hashing thread goes before it tells the sender: little at the
    start and the end (the sender waits then), :data:`PROGRESS_STEP` between."""
    if offset < PROGRESS_STEP or size - offset < 2 * PROGRESS_STEP:
        return HASH_READ
    return PROGRESS_STEP


@implementer(IPushProducer)
class SendfileBody:
    """A whole large file sent by the kernel, while a pool thread hashes it ahead.

    The hashing thread reads every byte first (so the pages ``sendfile`` sends
    are in the page cache: the reactor never waits for a disk) and reports how
    far it got; the sender never passes it, and holds back the last
    :data:`TAIL` bytes until the digest is known: on a mismatch the delivery
    fails with :class:`~stor.core.errors.CorruptReplica` before the file is
    complete.  Hashing (one core) and sending (the kernel, on the other)
    overlap instead of taking turns.
    """

    def __init__(self, f: IO[bytes], path: str, size: int, run: Runner, sha: str,
                 call_from_thread: Callable[..., object], *, twin: str | None = None,
                 on_fault: OnFault | None = None) -> None:
        self._file = f
        self._fd = f.fileno()
        self._left: list[IO[bytes]] = []  # replicas left for the twin, closed at the end
        self._twin = twin
        self._on_fault = on_fault
        self._path = path
        self._size = size
        self._run = run
        self._sha = sha
        self._call_from_thread = call_from_thread
        self._target: SendTarget | None = None
        self._sent = 0
        self._hashed = 0
        self._verified = False
        self._hashing = True  # the thread reads the file: it stays open until it is done
        self._paused = True  # until the headers are out
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def write_to(self, target: SendTarget) -> "Deferred[None]":
        self._target = target
        target.begin(self)
        d = self._run(self._hash_all)
        d.addBoth(self._hash_ended)
        d.addCallbacks(self._digested, self._hash_failed)
        return self._done

    # -- the hashing thread ----------------------------------------------------

    def _hash_all(self) -> str | None:
        hasher = hashlib.sha256()
        buf = bytearray(HASH_READ)
        view = memoryview(buf)
        offset = reported = 0
        fd, path, twin = self._fd, self._path, self._twin
        while offset < self._size:
            if self._stopped:
                return None  # the client went away: no digest wanted
            try:
                n = os.preadv(fd, [view[:min(len(buf), self._size - offset)]], offset)
            except OSError as e:
                if twin is None:
                    raise
                # the rest comes from the twin: the sender, which never passes what
                # is hashed, switches before it hears of any offset beyond this one
                f = open_twin(twin, self._size, path, e)
                self._call_from_thread(self._switch, f, twin, path, e)
                fd, path, twin = f.fileno(), twin, None
                continue
            if n == 0:
                raise StorageFailure(f"{self._path} is shorter than its size")
            hasher.update(view[:n])
            offset += n
            if offset - reported >= _step(offset, self._size):
                reported = offset
                self._call_from_thread(self._hashed_to, offset)
        return hasher.hexdigest()

    def _switch(self, f: IO[bytes], twin: str, failed: str, error: OSError) -> None:
        """On the reactor: the rest of the file comes from ``twin`` (``failed`` could
        not be read)."""
        self._left.append(self._file)
        self._file, self._fd, self._path = f, f.fileno(), twin
        if self._on_fault is not None:
            self._on_fault(failed, error)

    def _close_files(self) -> None:
        for f in [*self._left, self._file]:
            f.close()

    def _hash_ended(self, result: object) -> object:
        self._hashing = False
        if self._stopped:
            self._close_files()
        return result

    def _hashed_to(self, offset: int) -> None:
        self._hashed = offset
        self._pump()  # more may go now; only the connection itself unpauses the sender

    def _digested(self, actual: str | None) -> None:
        if self._stopped or actual is None:
            return
        if actual != self._sha:
            self._stop(CorruptReplica(self._path, actual))
            return
        self._hashed, self._verified = self._size, True
        self._pump()

    def _hash_failed(self, failure: Any) -> None:
        error = _reported(failure, self._path, self._on_fault)
        if not self._stopped:
            self._stop(error)

    # -- the sender (reactor) --------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        """The connection takes more (the headers, or what it had buffered, are out)."""
        self._paused = False
        self._pump()

    def _pump(self) -> None:
        """Send what the hash allows, unless the connection is paused: a sender woken
        by the hashing thread must not overtake what twisted still buffers."""
        if self._paused or self._stopped:
            return
        limit = self._size if self._verified else min(self._hashed, self._size - TAIL)
        budget = SEND_BUDGET
        assert self._target is not None
        while not (self._paused or self._stopped) and self._sent < limit and budget > 0:
            try:
                n = self._target.send(self._fd, self._sent, min(limit - self._sent, budget))
            except OSError as e:
                self._stop(StorageFailure(f"cannot send {self._path}: {e.strerror}"))
                return
            if n is None:
                self._paused = True  # resumed when the connection can take more
                return
            if n == 0:
                self._stop(StorageFailure(f"{self._path} is shorter than its size"))
                return
            self._sent += n
            budget -= n
        if self._sent >= self._size:
            self._stop(None)
        elif budget <= 0 and not self._paused:
            self._call_from_thread(self._pump)  # a turn for other connections first

    def stopProducing(self) -> None:
        """The client went away: stop sending (and hashing)."""
        self._stop(CancelledError())

    def _stop(self, error: BaseException | None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._target is not None:
            self._target.end()
        if not self._hashing:
            self._close_files()
        if self._done.called:
            return
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(error)
