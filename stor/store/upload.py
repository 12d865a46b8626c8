"""Receiving an upload: the reactor half, as an explicit state machine.

An :class:`Upload` is the consumer of one POST body.  It is created when the
request's headers are in; the duplicate check and the choice (and space
reservation) of a pair run in the disk pool meanwhile.  Each chunk the
connection delivers is queued on the reactor thread and handed, in batches,
to a :class:`~stor.store.pipeline.Pipeline` whose two lanes hash the body and
write it to both members of the pair (:class:`~stor.disk.spool.Spool`) side
by side.  When more than :data:`HIGH_WATER` bytes wait or are being written,
the connection (the registered producer) is paused, so memory stays flat
whatever the file size.  When the
body is complete the digest is compared with the SHA and, only on a match,
:func:`~stor.disk.spool.commit` puts the file in place.

States (:class:`State`)::

    PREPARING ──► RECEIVING ──► COMMITTING ──► DONE
        │             │
        └──► SKIPPING ◄┘ (answer known: a duplicate, too large; the rest of
                          the body is read and dropped)
    any ──► ABORTED (the client went away: whatever was written is removed)

A length above ``max_upload_size`` or larger than any writable pair could
hold is answered at once (:meth:`Upload.refused_before_body`).  Once the body
is in, the commit runs to its end even if the client leaves (Klein cancels the
route): the temps are installed or removed on every path.  Any other pair
that cannot be prepared (no room, failing disks) does not stop the
body from being hashed: the answer keeps the contract's order (a body that
does not match its SHA is 412 even when there is no room) unless the client
asked ``Expect: 100-continue`` and was answered before sending it.

When both members of the pair fail under the upload (a write, the fsync), a
body of at most :data:`HAND_ON_MAX` bytes, kept meanwhile, is handed on to
another pair once verified, and a larger one is answered 503: see
:func:`~stor.disk.spool.hand_on`.
"""

import hashlib
from collections.abc import Callable
from enum import Enum

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stor.core.errors import HashMismatch, StorageFailure, StorError, TooLarge, UploadAborted
from stor.core.reactor import Runner
from stor.core.results import Duplicate, UploadResult
from stor.disk.commit import MemberFailed
from stor.disk.spool import NoRoomAtAll, Spool, as_stor_error
from stor.store.pipeline import Pipeline

_log = Logger()

HIGH_WATER = 4 * 1024 * 1024
"""Queued bytes at which the connection is paused."""

HAND_ON_MAX = HIGH_WATER
"""Bodies up to this size are kept in memory until their commit, so that an upload
whose pair fails whole (both members: EIO, ENOSPC) is handed on to another pair
instead of failing (:func:`~stor.disk.spool.hand_on`); a larger one answers a
retryable 503.  Equal to :data:`HIGH_WATER`: the chunks kept are those already
held, so an upload's memory stays bounded as before (docs/durability.rst)."""

BATCH = 2 * 1024 * 1024
"""Most bytes handed to the lanes at once.  A batch is whatever has arrived since
the lanes took the last one, up to this: while they keep up, batches stay small
and the hash and the writes follow the body on data still in the CPU's caches;
when they fall behind, larger batches mean fewer pool jobs (two per batch:
the hash and both replicas' writes, each a thread hand-off both ways).  2 MiB
measured 4-7 % faster than 512 KiB for 4 MiB uploads and 15-20 % for 256 MiB
ones; 4 MiB (a whole small body as one batch, nothing overlapping its
arrival) 20 % slower (docs/benchmarks.rst).  Memory is bounded by
:data:`HIGH_WATER`, not by this."""


class State(Enum):
    PREPARING = "preparing"
    RECEIVING = "receiving"
    SKIPPING = "skipping"
    COMMITTING = "committing"
    DONE = "done"
    ABORTED = "aborted"


HandOn = Callable[[Spool, int, "list[bytes] | None"], Spool]
"""Blocking: a spool whose pair failed whole, the body's size and the body if kept →
a spool on another pair, written and fsynced; raises the answer when there is none
(:func:`stor.disk.spool.hand_on`)."""


@implementer(IConsumer)
class Upload:
    """One POST body on its way to disk; lives on the reactor thread.

    ``prepare(length)`` (blocking, in the pool) returns a :class:`Duplicate` or
    an open :class:`Spool`; ``commit(spool)`` (blocking) returns the result,
    which ``committed(sha, result)`` is then told on the reactor.  ``run``
    runs a blocking call in the disk pool; ``run_locked`` (prepare and commit)
    one that holds the SHA's lock, waited for without a pool thread
    (:mod:`stor.disk.lockwait`).
    """

    def __init__(self, sha: str, length: int | None, run: Runner,
                 prepare: Callable[[str, int | None], "Duplicate | Spool"],
                 commit: Callable[[Spool], UploadResult],
                 max_size: int | None = None,
                 committed: Callable[[str, UploadResult], None] | None = None,
                 run_locked: Runner | None = None,
                 hand_on: "HandOn | None" = None) -> None:
        self.sha = sha
        self.length = length
        self.received = 0
        self.state = State.PREPARING
        self._run = run
        self._run_locked = run_locked or run  # prepare and commit: under the SHA's lock
        self._commit = commit
        self._committed = committed
        self._max_size = max_size
        self._hasher = hashlib.sha256()
        self._spool: Spool | None = None
        self._failure: StorError | None = None  # the pair could not be prepared or written
        self._outcome: UploadResult | StorError | None = None  # decided before the body's end
        self._queue: list[bytes] = []
        self._queued = 0
        self._pipeline: Pipeline | None = None  # once prepared
        self._working = True  # a pool call is in flight outside the pipeline (preparing)
        self._waiters: list[Deferred[None]] = []
        self._producer: IPushProducer | None = None
        self._paused = False
        self._cleanup: Deferred[None] = succeed(None)
        self._hand_on = hand_on
        self._kept: list[bytes] | None = (
            [] if hand_on is not None and (length is None or length <= HAND_ON_MAX) else None)
        """The whole body so far while it fits :data:`HAND_ON_MAX` (None: not kept)."""
        if max_size is not None and length is not None and length > max_size:
            self._working = False
            self._skip(TooLarge(max_size))
        else:
            self._run_locked(prepare, sha, length).addBoth(self._prepared)

    # -- IConsumer ------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """The connection feeding the body: a push producer (it is paused while the
        disks are behind); anything else is refused at once, by zope's adaptation."""
        self._producer = IPushProducer(producer)

    def unregisterProducer(self) -> None:
        self._unpause()
        self._producer = None

    def write(self, data: bytes) -> None:
        """A chunk of the body has arrived."""
        self.received += len(data)
        if self.state not in (State.PREPARING, State.RECEIVING):
            return  # the answer is known: the rest of the body is not needed
        if self._max_size is not None and self.received > self._max_size:
            self._skip(TooLarge(self._max_size))
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._kept is not None:
            self._keep(data)
        if self._holding() >= HIGH_WATER and not self._paused and self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()
        self._kick()

    # -- what the HTTP layer asks ---------------------------------------

    async def screen(self) -> UploadResult | None:
        """Before the body (``Expect: 100-continue``): the final answer if the
        headers alone decide it.

        Returns a :class:`Duplicate`, raises :class:`~stor.core.errors.TooLarge`
        or the storage error of a pair that could not be prepared (the upload
        then keeps that answer), or returns None: send the body.
        """
        while self.state is State.PREPARING:
            await self._idle()
        if isinstance(self._outcome, StorError):
            raise self._outcome
        if self._outcome is not None:
            return self._outcome
        if self._failure is not None:
            self._skip(self._failure)  # the client is told now; its body will not be read
            raise self._failure
        return None

    async def refused_before_body(self) -> bool:
        """Whether the headers alone refuse this upload whatever its body: longer
        than ``max_upload_size`` (413) or than any writable pair can hold (507).

        Then the answer is given at once, with or without ``Expect``: a client
        announcing 10^13 bytes must not be left sending them for nothing.
        """
        while self.state is State.PREPARING:
            await self._idle()
        return isinstance(self._outcome, (TooLarge, NoRoomAtAll))

    async def finish(self) -> UploadResult:
        """The whole body has arrived: wait for it on disk, then verify and commit."""
        while self._busy() or self._queue:
            await self._idle()
        await self._cleanup  # temps of a refused body are gone before the answer
        if self.state is State.ABORTED:
            raise UploadAborted("upload aborted")
        if self.state is State.SKIPPING:
            if isinstance(self._outcome, StorError):
                raise self._outcome
            assert self._outcome is not None
            return self._outcome
        actual = self._hasher.hexdigest()
        if actual != self.sha:
            await self._discard()
            raise HashMismatch(self.sha, actual)
        if self._failure is not None and self._lost() is None:
            await self._discard()
            raise self._failure
        spool, self._spool = self._spool, None
        assert spool is not None
        self.state = State.COMMITTING
        return await _shielded(Deferred.fromCoroutine(self._commit_stage(spool)))

    async def _commit_stage(self, spool: Spool) -> UploadResult:
        """fsync and commit ``spool``; runs to its end even when the answer is no
        longer awaited (the client left at the last byte: the route's Deferred
        is cancelled), so the temps are always installed or removed."""
        try:
            await gatherResults([self._run(spool.sync_member, s) for s in spool.live()],
                                consumeErrors=True)
        except BaseException:
            await self._run(spool.discard)
            raise
        if not spool.live() and self._hand_on is not None:  # the pair failed whole
            body, self._kept = self._kept, None
            spool = await self._run(self._hand_on, spool, self.received, body)
        self._kept = None
        result = await self._run_locked(self._commit, spool)  # it removes the temps on every path
        self.state = State.DONE
        if self._committed is not None:
            self._committed(self.sha, result)
        return result

    def abort(self) -> None:
        """The client went away: stop, and leave nothing behind."""
        if self.state in (State.ABORTED, State.DONE, State.COMMITTING):
            return
        self.state = State.ABORTED
        self._kept = None
        self._drop_queue()
        if not self._busy():
            self._discard()
        self._wake()

    # -- internals ------------------------------------------------------

    def _prepared(self, result: "Duplicate | Spool | Failure") -> None:
        self._working = False
        if isinstance(result, Duplicate):
            self._skip(result)
        elif isinstance(result, Spool):
            self._spool = result
            if self.state is State.PREPARING:
                self.state = State.RECEIVING
            else:
                self._discard()  # skipped or aborted meanwhile
        elif isinstance(result.value, NoRoomAtAll):
            self._skip(result.value)  # answered before the body (see refused_before_body)
        else:
            self._failure = self._as_error(result)
            if self.state is State.PREPARING:
                self.state = State.RECEIVING  # hash the body all the same (see the module doc)
        if self.state is State.RECEIVING:
            self._pipeline = Pipeline(self._run, self._lanes(), self._progressed)
        self._kick()

    def _lanes(self) -> list[Callable[[list[bytes]], object]]:
        """The hash, and the writes: each sees every chunk, in order.

        One lane writes both members, one after the other: writes to the page
        cache take a fraction of the hash's time, and a third thread would only
        wait for the GIL (measured: slower on two cores, no faster on more).
        """
        lanes: list[Callable[[list[bytes]], object]] = [self._hash]
        if self._spool is not None:
            lanes.append(self._spool.write)
        return lanes

    def _hash(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hasher.update(chunk)

    def _keep(self, data: bytes) -> None:
        assert self._kept is not None
        if self.received > HAND_ON_MAX:
            self._kept = None  # a chunked body outgrew the bound: a failing pair means 503
        else:
            self._kept.append(data)

    def _lost(self) -> Spool | None:
        """The spool, when every member of its pair failed mid-upload and the upload can
        be handed on (or answered 503) instead of failing: :func:`~stor.disk.spool.hand_on`."""
        spool = self._spool
        if self._hand_on is None or spool is None or spool.live() or not spool.failures:
            return None
        if self._pipeline is not None and self._pipeline.error is not None:
            return None  # not a storage's failure: stor's own, logged
        return spool

    def _skip(self, outcome: UploadResult | StorError) -> None:
        self._outcome = outcome
        self._kept = None
        self.state = State.SKIPPING
        self._drop_queue()
        if not self._busy():
            self._discard()
        self._wake()

    def _busy(self) -> bool:
        return self._working or (self._pipeline is not None and not self._pipeline.idle)

    def _holding(self) -> int:
        """Body bytes in memory: queued here, or being hashed and written."""
        return self._queued + (self._pipeline.in_flight if self._pipeline is not None else 0)

    def _kick(self) -> None:
        """Push the queued chunks to the pipeline unless its lanes are still behind."""
        pipeline = self._pipeline
        if pipeline is None or self.state is not State.RECEIVING:
            if not self._busy():
                self._unpause()
                self._wake()
            return
        while self._queue and pipeline.backlog < 2:
            pipeline.push(self._take(BATCH))
        if self._holding() < HIGH_WATER:
            self._unpause()
        self._wake()

    def _take(self, most: int) -> list[bytes]:
        """The oldest queued chunks, at least one, up to ``most`` bytes."""
        taken, size = 0, 0
        for chunk in self._queue:
            if taken and size + len(chunk) > most:
                break
            taken += 1
            size += len(chunk)
        chunks, self._queue = self._queue[:taken], self._queue[taken:]
        self._queued -= size
        return chunks

    def _progressed(self) -> None:
        """A lane finished a batch."""
        pipeline, spool = self._pipeline, self._spool
        if pipeline is not None and pipeline.error is not None and self._failure is None:
            self._failure = self._as_error(pipeline.error)
        if spool is not None and not spool.live() and self._failure is None:
            self._failure = as_stor_error(spool.failures)  # every member failed: hash on
        if self.state is not State.RECEIVING and not self._busy():
            self._discard()
        self._kick()

    def _as_error(self, failure: Failure) -> StorError:
        error = failure.value
        if isinstance(error, StorError):
            return error
        if isinstance(error, MemberFailed):
            failures = self._spool.failures if self._spool is not None else [error]
            return as_stor_error(failures)
        # the log has the exception; the client and Stor-Reason get stor's words only
        _log.failure("upload of {sha} failed unexpectedly", failure=failure, sha=self.sha)
        return StorageFailure("unexpected error (logged)")

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0
        self._unpause()

    def _unpause(self) -> None:
        if self._paused and self._holding() < HIGH_WATER:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()

    def _idle(self) -> "Deferred[None]":
        """Fires the next time no pool call is in flight (see :meth:`_wake`)."""
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _wake(self) -> None:
        if self._waiters and not self._busy():
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def _discard(self) -> "Deferred[None]":
        """Remove the temp files (in the pool); fires once they are gone (also
        when an earlier call started the removal)."""
        spool, self._spool = self._spool, None
        if spool is not None:
            self._cleanup = self._run(spool.discard)
        return self._cleanup


def _shielded(work: "Deferred[UploadResult]") -> "Deferred[UploadResult]":
    """A Deferred with ``work``'s result whose cancellation leaves ``work`` running.

    Cancelling a Deferred from the disk pool does not stop the thread, it only
    forgets its result: a commit cancelled half way would leak its temp files,
    their fds, locks and reserved space for good (issue 18, case 5)."""
    waiter: "Deferred[UploadResult]" = Deferred()

    def relay(result: "UploadResult | Failure") -> None:
        if not waiter.called:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        elif isinstance(result, Failure) and not result.check(StorError):
            _log.failure("upload commit failed after its client left", failure=result)

    work.addBoth(relay)
    return waiter
