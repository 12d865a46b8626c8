"""Background replica repair: every read that finds a file on one member of its
pair but not the other brings the twin back, and a replica found corrupt is
replaced from its (verified) twin.

A read is never delayed: the twin's presence is checked on the reactor only
when the kernel can answer from its caches (:mod:`stor.disk.nowait`), otherwise
in the disk pool, and the copy itself (verified, installed under the SHA's
lock: :func:`stor.disk.replica.copy_to_twin`) runs in the disk pool.  The
check is made by reads, cache hit or not; a twin found whole is not looked at
again by reads of the same replica for :data:`TWIN_RECHECK` seconds (a hot
file read thousands of times a second costs one twin check a second, not one
per read: the check was a tenth of a small GET's CPU).  At
most ``concurrency`` copies run at once and at most ``backlog`` wait; beyond
that repairs are dropped and counted (the next read, or ``stor scrub
--repair``, finds the file again).  Storages that take no new files
(``writable_pairs_regex``) are not repaired onto.
"""

import os
import time
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from stor.core import layout
from stor.core.metrics import Metrics
from stor.disk import nowait
from stor.disk.locks import ShaLocks
from stor.disk.local import LocalStore
from stor.disk.replica import CorruptSource, SourceGone, copy_to_twin

log = Logger()

TWIN_RECHECK = 1.0
"""Seconds a twin found whole (at the size read) is trusted by reads of its replica."""
TWINS_REMEMBERED = 65536
"""Twins found whole remembered at most (the oldest forgotten first)."""


class Repairer:
    """Queues and runs verified copies from one member of a pair to the other."""

    def __init__(self, store: LocalStore, locks: ShaLocks, metrics: Metrics,
                 concurrency: int = 2, backlog: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._locks = locks
        self._metrics = metrics
        self._concurrency = concurrency
        self._backlog = backlog
        self._queue: deque[tuple[str, str, str]] = deque()
        self._pending: set[str] = set()
        self._running = 0
        self._checking = 0
        self._idle: list[Deferred[None]] = []
        self._whole: dict[tuple[str, str, int | None], float] = {}
        self._clock = clock

    def found(self, sha: str, storage: str, size: int | None = None,
              trusting: bool = True) -> None:
        """A read found ``sha`` on ``storage`` (``size`` bytes): make sure its twin
        has it too, and at that size: an emptied or truncated twin is not a
        copy (the verified copy replaces it; a same-size corruption is found
        when a read hashes it).  ``trusting``: a twin found whole less than
        :data:`TWIN_RECHECK` seconds ago is not looked at (a read that had to
        search, its remembered replica gone, passes False: something changed)."""
        now = self._clock()
        seen = self._whole.get((sha, storage, size))
        if trusting and seen is not None and now - seen < TWIN_RECHECK:
            return
        twin = self._store.twin(storage)
        if sha in self._pending or not self._store.writable(twin):
            return
        twin_path = layout.file_path(twin, sha)
        try:
            fd = nowait.open_cached(twin_path)
        except (FileNotFoundError, NotADirectoryError):
            self._enqueue(sha, storage, twin)
            return
        except OSError:
            return  # an odd twin (unreadable, ...) is scrub's business, not a read's
        if fd is None:  # cannot tell without the disk: let the pool look
            self._checking += 1
            self._store.run(_size_of, twin_path).addBoth(self._checked, sha, storage, twin, size)
            return
        try:
            twin_size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size is not None and twin_size != size:
            self._enqueue(sha, storage, twin)
        else:
            self._remember((sha, storage, size), now)

    def _remember(self, key: tuple[str, str, int | None], now: float) -> None:
        self._whole.pop(key, None)
        self._whole[key] = now
        if len(self._whole) > TWINS_REMEMBERED:
            del self._whole[next(iter(self._whole))]

    def replace(self, sha: str, bad_storage: str) -> None:
        """``sha``'s replica on ``bad_storage`` was corrupt (and moved aside): copy the twin back."""
        if self._store.writable(bad_storage):
            self._enqueue(sha, self._store.twin(bad_storage), bad_storage)

    def idle(self) -> "Deferred[None]":
        """Fires when no repair is queued or running (shutdown)."""
        if self._is_idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _checked(self, twin_size: object, sha: str, storage: str, twin: str,
                 size: int | None) -> None:
        self._checking -= 1
        if twin_size is None or (size is not None and isinstance(twin_size, int)
                                 and twin_size != size):
            self._enqueue(sha, storage, twin)
        else:
            self._next()  # nothing to do; maybe now idle

    def _is_idle(self) -> bool:
        return not (self._running or self._queue or self._checking)

    def _enqueue(self, sha: str, source: str, target: str) -> None:
        if sha in self._pending:
            return
        if len(self._queue) >= self._backlog:
            self._metrics.incr("repair.dropped.count")
            return
        self._pending.add(sha)
        self._queue.append((sha, source, target))
        self._metrics.incr("repair.queued.count")
        self._next()

    def _next(self) -> None:
        while self._queue and self._running < self._concurrency:
            sha, source, target = self._queue.popleft()
            self._running += 1
            d = self._store.run(copy_to_twin, layout.file_path(source, sha), target, sha,
                                self._locks)
            d.addCallbacks(self._done, self._failed, callbackArgs=(sha,),
                           errbackArgs=(sha, target))
            d.addBoth(self._finished, sha)
        if self._is_idle():
            idle, self._idle = self._idle, []
            for waiter in idle:
                waiter.callback(None)

    def _done(self, path: str, sha: str) -> None:
        self._metrics.incr("repair.done.count")
        log.info("repaired replica {path}", path=path, sha=sha)

    def _failed(self, failure: object, sha: str, target: str) -> None:
        error = getattr(failure, "value", failure)
        if isinstance(error, SourceGone):
            return  # deleted or quarantined meanwhile: nothing to repair from
        self._metrics.incr("repair.failed.count")
        why = "the source is corrupt too" if isinstance(error, CorruptSource) else str(error)
        log.warn("could not repair {sha} onto {target}: {error}", sha=sha, target=target,
                 error=why)

    def _finished(self, _: object, sha: str) -> None:
        self._running -= 1
        self._pending.discard(sha)
        self._next()


def _size_of(path: str) -> int | None:
    """Blocking: the size of the regular file at ``path``; None when there is none."""
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return None
