"""Background replica repair: a GET that finds a file on one member of its pair
but not the other brings the twin back.

The GET is never delayed: the twin's presence is checked on the reactor only
when the kernel can answer from its caches (:mod:`stor.nowait`), otherwise in
the disk pool, and the copy itself (verified, temp + fsync + rename:
:func:`stor.replica.copy_to_twin`) runs in the disk pool.  At most
``concurrency`` copies run at once and at most ``backlog`` wait; beyond that
repairs are dropped and counted (the next GET, or ``stor scrub --repair``,
will find the file again).  Storages that take no new files
(``writable_pairs_regex``) are not repaired onto.
"""

import os
import re
from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from stor.core import layout
from stor.fs import nowait
from stor.peers.statsd import Metrics
from stor.core.placement import writable
from stor.store.replica import copy_to_twin
from stor.store.local import LocalStore

log = Logger()


class Repairer:
    """Queues and runs twin copies for files found on one member only."""

    def __init__(self, store: LocalStore, metrics: Metrics, writable_regex: re.Pattern[str],
                 concurrency: int = 2, backlog: int = 1000) -> None:
        self._store = store
        self._metrics = metrics
        self._twin = {a: b for pair in store.pairs for a, b in (pair, pair[::-1])}
        self._writable = writable_regex
        self._concurrency = concurrency
        self._backlog = backlog
        self._queue: deque[tuple[str, str, str]] = deque()
        self._pending: set[str] = set()
        self._running = 0
        self._checking = 0
        self._idle: list[Deferred[None]] = []
        self.repaired = 0
        self.failed = 0
        self.dropped = 0

    def found(self, sha: str, storage: str, path: str) -> None:
        """A GET found ``sha`` at ``path`` on ``storage``: make sure its twin has it too."""
        twin = self._twin.get(storage)
        if twin is None or sha in self._pending or not writable(twin, self._writable):
            return
        twin_path = layout.file_path(twin, sha)
        try:
            fd = nowait.open_cached(twin_path)
        except (FileNotFoundError, NotADirectoryError):
            self._enqueue(sha, path, twin)
            return
        except OSError:
            return  # an odd twin (unreadable, ...) is scrub's business, not a GET's
        if fd is None:  # cannot tell without the disk: let the pool look
            self._checking += 1
            self._store.run(os.path.exists, twin_path).addBoth(self._checked, sha, path, twin)
        else:
            os.close(fd)

    def _checked(self, there: object, sha: str, path: str, twin: str) -> None:
        self._checking -= 1
        if there is False:
            self._enqueue(sha, path, twin)
        else:
            self._next()  # nothing to do; maybe now idle

    def idle(self) -> "Deferred[None]":
        """Fires when no repair is queued or running (tests, shutdown)."""
        if self._is_idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d

    def _is_idle(self) -> bool:
        return not (self._running or self._queue or self._checking)

    def _enqueue(self, sha: str, source: str, twin: str) -> None:
        if sha in self._pending:
            return
        if len(self._queue) >= self._backlog:
            self.dropped += 1
            self._metrics.incr("repair.dropped.count")
            return
        self._pending.add(sha)
        self._queue.append((sha, source, twin))
        self._metrics.incr("repair.queued.count")
        self._next()

    def _next(self) -> None:
        while self._queue and self._running < self._concurrency:
            sha, source, twin = self._queue.popleft()
            self._running += 1
            d = self._store.run(copy_to_twin, source, twin, sha)
            d.addCallbacks(self._done, self._failed, callbackArgs=(sha,),
                           errbackArgs=(sha, twin))
            d.addBoth(self._finished, sha)
        if self._is_idle():
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def _done(self, path: str, sha: str) -> None:
        self.repaired += 1
        self._metrics.incr("repair.done.count")
        log.info("repaired missing replica {path}", path=path, sha=sha)

    def _failed(self, failure: object, sha: str, twin: str) -> None:
        self.failed += 1
        self._metrics.incr("repair.failed.count")
        log.warn("could not repair {sha} onto {twin}: {error}", sha=sha, twin=twin,
                 error=getattr(failure, "value", failure))

    def _finished(self, _: object, sha: str) -> None:
        self._running -= 1
        self._pending.discard(sha)
        self._next()
