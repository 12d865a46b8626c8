"""Small uploads stored in batches by one thread: the group commit without a thread per upload.

With a small upload per disk-pool thread, eight uploads at once were eight
threads taking turns at the GIL around every system call (534 ``futex`` calls
per upload, a fifth of the CPU in waking and switching threads) and, the flushes
being short here, hardly ever sharing one (1.96 ``syncfs`` per upload).  A
batch is the other way round: a :class:`SmallBatcher` thread takes every small
upload waiting when it is free (up to :data:`MOST`) and stores them together
(:func:`~stor.disk.small.store_batch`): each body hashed and written, **one**
group round for all their data, every duplicate check, marker and rename, **one**
round for all their entries, every answer handed to the reactor in one wake-up.
The uploads that arrive meanwhile form the next batch, taken as soon as the
thread is free, so a batch grows with the load and a lone upload waits for
nobody.  Measured with 8 clients: 129 ``futex`` and 0.79 ``syncfs`` per
upload, 3.5 uploads a batch (two threads then).

One thread, not two: a second one let a batch's flush overlap the next one's
writing, but the two took turns at the GIL around their sixty-odd system
calls a job (and the reactor's): with creates at their usual cost one thread
stored 1.05x (64 KiB) to 1.22x (4 KiB) as many small uploads a second with 8
clients, as many with one client (docs/benchmarks.rst, "Stop 28").  Two won
only while every ``open(O_CREAT)`` cost a millisecond of kernel CPU (ext4
without a journal after thousands of deletes), which two threads spread over
both cores.

Each answer still waits for its own bytes and entries to be durable: a round
covers everything changed on its filesystem before it began
(:mod:`stor.disk.groupsync`).  A job whose SHA's lock is held elsewhere comes
back as :data:`~stor.disk.small.LOCK_TAKEN` for the caller to wait for the lock
its usual way (:mod:`stor.disk.lockwait`); no job ever waits for a lock here, so
one held lock cannot stop the batches.
"""

import threading
from collections import deque
from collections.abc import Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core.reactor import Reactor
from stor.disk.groupsync import GroupSync
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.core.results import UploadResult
from stor.disk.small import LockTaken, Outcome, SmallJob, store_batch

Answered = UploadResult | LockTaken
"""What a job's Deferred fires with (its errors are failures)."""

MOST = 32
"""Jobs in one batch at most (32 MiB of bodies at most: each is at most 1 MiB)."""

THREADS = 1
"""Threads storing batches (see the module docstring: one measured best)."""

_log = Logger()


class SmallBatcher(Service):
    """Threads storing the small uploads handed to :meth:`submit`, in batches."""

    def __init__(self, reactor: Reactor, store: LocalStore, locks: ShaLocks, group: GroupSync,
                 most: int = MOST, threads: int = THREADS, name: str = "stor-small") -> None:
        self._reactor = reactor
        self._store = store
        self._locks = locks
        self._group = group
        self._most = most
        self._name = name
        self._arrived = threading.Condition()
        self._waiting: deque[tuple[Deferred[Answered], SmallJob]] = deque()
        self._stopping = False
        self._size = threads
        self._threads: list[threading.Thread] = []
        self.batches = 0
        """Batches stored so far (for the bench)."""

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self._start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        with self._arrived:
            self._stopping = True  # the jobs waiting are still stored, then the threads end
            self._arrived.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def submit(self, job: SmallJob) -> "Deferred[Answered]":
        """Store ``job`` with the next batch; its result (or :data:`~stor.disk.small.
        LOCK_TAKEN`) fires on the reactor thread, an error as the Deferred's failure."""
        self._start()
        d: Deferred[Answered] = Deferred()
        with self._arrived:
            self._waiting.append((d, job))
            self._arrived.notify()
        return d

    def _start(self) -> None:
        while len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, daemon=True,
                                      name=f"{self._name}-{len(self._threads)}")
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._store_all(batch)

    def _next_batch(self) -> "list[tuple[Deferred[Answered], SmallJob]] | None":
        """What is waiting (at least one job; None once stopping with nothing left), up
        to :attr:`_most` jobs.

        Nothing is awaited beyond the first job: waiting a millisecond or two for as
        many as the last batch had measured no better (a lone upload paid it)."""
        with self._arrived:
            while not self._waiting and not self._stopping:
                self._arrived.wait()
            if not self._waiting:
                return None
            batch: list[tuple[Deferred[Answered], SmallJob]] = []
            while self._waiting and len(batch) < self._most:
                batch.append(self._waiting.popleft())
        return batch

    def _store_all(self, batch: Sequence[tuple["Deferred[Answered]", SmallJob]]) -> None:
        try:
            outcomes: Sequence[Outcome | Failure] = store_batch(
                [job for _, job in batch], self._store, self._locks, self._group)
        except BaseException:  # a bug: every job of the batch is answered with it
            failure = Failure()
            _log.failure("a batch of small uploads failed", failure=failure)
            outcomes = [failure] * len(batch)
        self.batches += 1
        self._reactor.callFromThread(self._deliver, [d for d, _ in batch], outcomes)

    @staticmethod
    def _deliver(waiting: Sequence["Deferred[Answered]"],
                 outcomes: Sequence[Outcome | Failure]) -> None:
        for d, outcome in zip(waiting, outcomes):
            if isinstance(outcome, (Exception, Failure)):
                d.errback(outcome)
            else:
                d.callback(outcome)
