"""Receiving an upload: hash the body as it arrives and spool it to a pair.

The body is read once.  Each chunk the connection delivers is queued on the
reactor thread; a worker thread hashes queued chunks and writes them into temp
files on both members of the chosen pair (:class:`Spool`).  When the queue
grows past :data:`HIGH_WATER` the connection is paused, so memory stays flat
whatever the file size.  At the end the digest is compared with the SHA in the
URL and, only if it matches, both temp files are fsynced and renamed into place.
"""

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core import layout
from stor.core.errors import HashMismatch, NoSpace, StorageFailure, StorError, TooLarge, UploadAborted
from stor.core.placement import Pair
from stor.fs.fsio import fsync_dir, unlink_quietly, write_all
from stor.store.local import LocalStore, find_all, is_no_space, temp_dir, temp_name

HIGH_WATER = 4 * 1024 * 1024
"""Queued bytes at which the connection is paused."""

log = Logger()


@dataclass(frozen=True)
class Stored:
    """The file was written: 201 with these paths."""

    paths: list[str]


@dataclass(frozen=True)
class Duplicate:
    """The file was already stored: 200 with these paths."""

    paths: list[str]


UploadResult = Stored | Duplicate


class Spool:
    """Temp files being written on both members of a pair.  Every method blocks."""

    def __init__(self, pair: Pair, sha: str) -> None:
        self.pair = pair
        self.sha = sha
        self.temps: list[str] = []
        self._fds: list[int] = []
        name = temp_name(sha)
        try:
            for storage in pair:
                os.makedirs(temp_dir(storage), exist_ok=True)
                path = os.path.join(temp_dir(storage), name)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                self._fds.append(os.open(path, flags, 0o644))
                self.temps.append(path)
        except OSError as e:
            self.discard()
            raise _storage_error(e, storage) from e

    def write(self, chunks: list[bytes]) -> None:
        """Append ``chunks`` to both temp files."""
        for fd, storage in zip(self._fds, self.pair):
            try:
                for chunk in chunks:
                    write_all(fd, chunk)
            except OSError as e:
                raise _storage_error(e, storage) from e

    def commit(self) -> list[str]:
        """fsync both temp files and rename them to their final paths."""
        finals = [layout.file_path(s, self.sha) for s in self.pair]
        placed: list[str] = []
        try:
            for fd in self._fds:
                os.fsync(fd)
            self._close()
            for temp, final in zip(self.temps, finals):
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.rename(temp, final)
                placed.append(final)
                fsync_dir(os.path.dirname(final))
        except OSError as e:
            for path in placed:  # a lone replica after an error answer would be a surprise
                unlink_quietly(path)
            self.discard()
            raise _storage_error(e, self.pair[len(placed)] if len(placed) < 2 else self.pair[1]) from e
        self.temps = []
        return finals

    def discard(self) -> None:
        """Close and remove the temp files; safe to call more than once."""
        self._close()
        for path in self.temps:
            unlink_quietly(path)
        self.temps = []

    def _close(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []


def _storage_error(e: OSError, storage: str) -> StorError:
    if is_no_space(e):
        return NoSpace(f"{storage} is full: {e.strerror}")
    return StorageFailure(f"cannot write to {storage}: {e.strerror}")


def open_spool(store: LocalStore, sha: str, size: int) -> Spool:
    """Blocking: choose a pair with room and open temp files on it.

    A pair whose temp files cannot be created (read-only or failing disk) is
    logged and skipped in favour of the next choice, so one bad disk does not
    stop uploads; when every candidate fails the last error is raised.
    """
    excluded: set[Pair] = set()
    failure: StorError | None = None
    while True:
        try:
            pair = store.choose_pair(size, excluded)
        except NoSpace:
            raise failure or NoSpace(f"no writable pair has room for {size} bytes") from None
        try:
            return Spool(pair, sha)
        except StorError as e:
            log.warn("cannot write to pair {pair}: {error}", pair=pair, error=str(e))
            excluded.add(pair)
            failure = e


class Upload:
    """One POST body on its way to disk; lives on the reactor thread.

    ``feed`` takes chunks as the connection delivers them, ``finish`` waits for
    the last one to be hashed and written and yields an :data:`UploadResult`
    (or fails with a :class:`~stor.errors.StorError`), ``abort`` is for a
    client that went away: whatever was written is removed.
    """

    def __init__(
        self,
        sha: str,
        length: int | None,
        store: LocalStore,
        pause: Callable[[], None],
        resume: Callable[[], None],
        max_size: int | None = None,
    ) -> None:
        self.sha = sha
        self.received = 0
        self._store = store
        self._pause, self._resume = pause, resume
        self._max_size = max_size
        self._hasher = hashlib.sha256()
        self._queue: list[bytes] = []
        self._queued = 0
        self._busy = True  # until the start-up lookup has run
        self._paused = False
        self._aborted = False
        self._spool: Spool | None = None
        self._outcome: UploadResult | StorError | None = None
        self._write_error: StorError | None = None
        self._waiters: list[Deferred[None]] = []
        self._cleanup: Deferred[None] = succeed(None)
        if max_size is not None and length is not None and length > max_size:
            self._outcome = TooLarge(max_size)
            self._busy = False
        else:
            store.run(self._prepare, length or 0).addBoth(self._prepared)

    # -- reactor side ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        """A chunk of the body has arrived."""
        self.received += len(data)
        if self._aborted or self._outcome is not None:
            return  # duplicate or refused: the rest of the body is not needed
        if self._max_size is not None and self.received > self._max_size:
            self._set_outcome(TooLarge(self._max_size))
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued >= HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        self._kick()

    @inlineCallbacks
    def finish(self):  # type: ignore[no-untyped-def]
        """The whole body has arrived: wait for it on disk, then verify and commit."""
        while self._busy or self._queue:
            yield self._idle()
        if self._aborted:
            raise UploadAborted("upload aborted")
        if isinstance(self._outcome, StorError):
            yield self._discard()
            raise self._outcome
        if isinstance(self._outcome, Duplicate):
            return self._outcome
        actual = self._hasher.hexdigest()
        if actual != self.sha:
            yield self._discard()
            raise HashMismatch(self.sha, actual)
        if self._write_error is not None:
            yield self._discard()
            raise self._write_error
        spool, self._spool = self._spool, None
        assert spool is not None
        result = yield self._store.run(self._commit, spool)
        return result

    @inlineCallbacks
    def screen(self):  # type: ignore[no-untyped-def]
        """Before the body: the final answer if the headers alone decide it.

        Returns a :class:`Duplicate`, raises :class:`~stor.errors.TooLarge` or
        :class:`~stor.errors.NoSpace`, or returns None: send the body.
        """
        while self._busy and not self.received:
            yield self._idle()
        if isinstance(self._outcome, StorError):
            raise self._outcome
        if isinstance(self._write_error, NoSpace):
            raise self._write_error
        return self._outcome

    def abort(self) -> None:
        """The client went away: stop, and leave nothing behind."""
        if self._aborted:
            return
        self._aborted = True
        self._queue.clear()
        self._queued = 0
        if not self._busy:
            self._discard()
        self._wake()

    # -- internals ------------------------------------------------------

    def _prepared(self, result: "UploadResult | Spool | Failure") -> None:
        self._busy = False
        if isinstance(result, Duplicate):
            self._set_outcome(result)
        elif isinstance(result, Spool):
            self._spool = result
            if self._aborted or self._outcome is not None:
                self._discard()
        else:
            self._write_error = self._as_storage_error(result)
        self._kick()

    def _as_storage_error(self, failure: Failure) -> StorError:
        if isinstance(failure.value, StorError):
            return failure.value
        log.failure("upload of {sha} failed", failure=failure, sha=self.sha)
        return StorageFailure(f"unexpected error: {failure.value}")

    def _set_outcome(self, outcome: UploadResult | StorError) -> None:
        self._outcome = outcome
        self._queue.clear()
        self._queued = 0
        if not self._busy:
            self._discard()
        self._unpause()
        self._wake()

    def _kick(self) -> None:
        if self._busy:
            return
        if not self._queue or self._aborted or self._outcome is not None:
            self._unpause()
            self._wake()
            return
        chunks, self._queue, self._queued = self._queue, [], 0
        self._busy = True
        self._store.run(self._consume, chunks).addBoth(self._consumed)

    def _consumed(self, result: "None | Failure") -> None:
        self._busy = False
        if isinstance(result, Failure):
            self._write_error = self._as_storage_error(result)
            self._discard()
        if self._aborted or self._outcome is not None:
            self._discard()
        if self._queued < HIGH_WATER:
            self._unpause()
        self._kick()

    def _unpause(self) -> None:
        if self._paused:
            self._paused = False
            self._resume()

    def _idle(self) -> "Deferred[None]":
        """Fires the next time no worker call is in flight (see :meth:`_wake`)."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _wake(self) -> None:
        if self._waiters and not self._busy:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _discard(self) -> "Deferred[None]":
        """Remove the temp files; the Deferred fires once they are gone (also
        when an earlier call started the removal)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            self._cleanup = self._store.run(spool.discard)
        return self._cleanup

    # -- worker-thread side ---------------------------------------------

    def _prepare(self, size: int) -> UploadResult | Spool:
        existing = find_all(self._store.lookup_order(), self.sha)
        if existing:
            return Duplicate(existing)
        return open_spool(self._store, self.sha, size)

    def _consume(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hasher.update(chunk)
        spool = self._spool
        if spool is not None and self._write_error is None:
            spool.write(chunks)

    def _commit(self, spool: Spool) -> UploadResult:
        existing = find_all(self._store.lookup_order(), self.sha)
        if existing:  # a concurrent upload of the same file finished first
            spool.discard()
            return Duplicate(existing)
        return Stored(spool.commit())
