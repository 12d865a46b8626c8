"""Waiting for a SHA's lock without holding a disk-pool thread.

A request that needs a SHA's lock (an upload's duplicate check and commit, a
DELETE) used to wait for it inside its pool job: a few local processes holding
``flock`` on lock files (or slow uploads of one SHA) could hold every pool
thread for the whole bounded wait, and every other GET and POST queued behind
them.  Here a job only *tries* the lock (``LOCK_NB``, a few microseconds); when
it is held, the pool thread is given back and the reactor tries again after a
growing pause (1 ms to 50 ms, ``callLater``), until the bound
(:data:`stor.disk.locks.LOCK_WAIT`), then :class:`~stor.disk.locks.LockBusy`
(503 Busy) as before.  The job that finally holds the lock runs the work in the
same pool call, so an uncontended lock costs no extra hop.

Without a clock (tests on a synchronous pool) the job waits in place, as
:meth:`~stor.disk.locks.ShaLocks.hold` does.
"""

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from stor.disk.locks import FIRST_PAUSE, LONGEST_PAUSE, LockBusy, ShaLocks

T = TypeVar("T")
Runner = Callable[..., "Deferred[Any]"]


class LockWaiter:
    """Runs blocking jobs holding a SHA's lock; waits for the lock on the reactor."""

    def __init__(self, locks: ShaLocks, run: Runner, clock: IReactorTime | None = None) -> None:
        self._locks = locks
        self._run = run
        self._clock = clock

    def run_locked(self, sha: str, f: Callable[..., T], *args: object) -> "Deferred[T]":
        """``f(*args)`` in the pool, holding ``sha``'s lock (:meth:`ShaLocks.hold` inside
        ``f`` is that lock); :class:`LockBusy` when it stayed held past the bound."""
        if self._clock is None:
            return self._run(self._waiting_in_place, sha, f, *args)
        return Deferred.fromCoroutine(self._locked(self._clock, sha, f, args))

    def _waiting_in_place(self, sha: str, f: Callable[..., T], *args: object) -> T:
        with self._locks.hold(sha):
            return f(*args)

    async def _locked(self, clock: IReactorTime, sha: str, f: Callable[..., T],
                      args: tuple[object, ...]) -> T:
        outcome = await self._run(self._try_and_run, sha, None, f, args)
        if not isinstance(outcome, _Waiting):
            return outcome  # type: ignore[no-any-return]  # f's result
        fd = outcome.fd
        deadline = clock.seconds() + self._locks.wait
        pause = FIRST_PAUSE
        try:
            while True:
                left = deadline - clock.seconds()
                if left <= 0:
                    raise LockBusy(sha, self._locks.wait)
                await deferLater(clock, min(pause, left))
                pause = min(pause * 2, LONGEST_PAUSE)
                outcome = await self._run(self._try_and_run, sha, fd, f, args)
                if not isinstance(outcome, _Waiting):
                    fd = -1  # closed by the job that held it
                    return outcome  # type: ignore[no-any-return]  # f's result
        finally:
            if fd >= 0:
                self._run(os.close, fd)  # gave up (or cancelled): let the lock file go

    def _try_and_run(self, sha: str, fd: int | None, f: Callable[..., T],
                     args: tuple[object, ...]) -> "T | _Waiting":
        """Blocking: one try at the lock; when taken, ``f`` runs here, under it."""
        fd, held = self._locks.try_lock_blocking(sha, fd)
        if not held:
            return _Waiting(fd)
        return self._locks.run_held_blocking(sha, fd, f, *args)


class _Waiting:
    """The lock was held by someone else: its file stays open for the next try."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
