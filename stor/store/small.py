"""The reactor half of a small upload: the body kept in memory, then stored with a batch.

A POST with a declared length of at most :data:`~stor.disk.small.SMALL_MAX`
bytes gets a :class:`SmallUpload` instead of the streaming
:class:`~stor.store.upload.Upload`: nothing is asked of the disks while the
body arrives (no duplicate check before it, no temps, no pipeline), and when
it is in, it joins the next batch of small uploads (:mod:`stor.disk.batch`),
whose thread hashes, checks, writes, makes durable and commits them together,
sharing two flushes (:mod:`stor.disk.groupsync`).  When the batch finds its
SHA's lock taken, one pool job stores it alone once the lock is free
(:func:`~stor.disk.small.store_small`, waited for by :mod:`stor.disk.lockwait`).

The answers are the streaming path's: 413 for a length over
``max_upload_size`` at once, 412 for a body not matching its SHA, 200 for a
duplicate (checked after the body: the body is small), 409 for a SHA deleted
meanwhile, the storage errors of :func:`~stor.disk.spool.open_spool`.  A
client asking ``Expect: 100-continue`` wants the duplicate check before it
sends anything: :meth:`SmallUpload.screen` then hands the whole upload to a
streaming :class:`~stor.store.upload.Upload`, made by ``streaming()``.
"""

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from stor.core.errors import TooLarge, UploadAborted
from stor.core.reactor import Runner
from stor.core.results import UploadResult
from stor.store.upload import Upload, _shielded

Batched = Callable[[str, bytes], "Deferred[UploadResult | None]"]
"""Stores a body with the next batch of small uploads (:mod:`stor.disk.batch`): its
result, or None when the batch could not take it (its SHA's lock was taken)."""


@implementer(IConsumer)
class SmallUpload:
    """One small POST body, collected on the reactor thread (an ``UploadHandle``).

    ``store(sha, body)`` is the blocking job (run by ``run`` in the disk pool);
    ``committed(sha, result)`` is told on the reactor, as for a streaming upload.
    """

    def __init__(self, sha: str, length: int, run: Runner,
                 store: Callable[[str, bytes], UploadResult],
                 streaming: Callable[[], Upload],
                 max_size: int | None = None,
                 committed: Callable[[str, UploadResult], None] | None = None,
                 batched: Batched | None = None) -> None:
        self.sha = sha
        self.length = length
        self.received = 0
        self._run = run
        self._store = store
        self._streaming = streaming
        self._committed = committed
        self._batched = batched
        self._chunks: list[bytes] = []
        self._refused = (TooLarge(max_size) if max_size is not None and length > max_size
                         else None)
        self._aborted = False
        self._delegate: Upload | None = None
        self._producer: IPushProducer | None = None

    # -- IConsumer ------------------------------------------------------

    def registerProducer(self, producer: IPushProducer,  # type: ignore[override]  # as Upload
                         streaming: bool) -> None:
        self._producer = producer
        if self._delegate is not None:
            self._delegate.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._delegate is not None:
            self._delegate.unregisterProducer()

    def write(self, data: bytes) -> None:
        """A chunk of the body: kept (at most ``length`` bytes are ever kept)."""
        if self._delegate is not None:
            self._delegate.write(data)
            self.received = self._delegate.received
            return
        self.received += len(data)
        if self._refused is None and not self._aborted and self.received <= self.length:
            self._chunks.append(data)

    # -- what the HTTP layer asks ---------------------------------------

    async def screen(self) -> UploadResult | None:
        """``Expect: 100-continue``: the streaming upload answers (it checks for a
        duplicate before the body is sent)."""
        if self._refused is not None:
            raise self._refused
        if self._delegate is None:
            self._delegate = self._streaming()
            if self._producer is not None:
                self._delegate.registerProducer(self._producer, True)
        return await self._delegate.screen()

    async def refused_before_body(self) -> bool:
        """413 at once for a length over ``max_upload_size``; a small length is never
        too large for a writable pair to be worth refusing unread."""
        if self._delegate is not None:
            return await self._delegate.refused_before_body()
        return self._refused is not None

    async def finish(self) -> UploadResult:
        """The whole body is in: one job stores it; the answer once it is durable."""
        if self._delegate is not None:
            return await self._delegate.finish()
        if self._refused is not None:
            raise self._refused
        if self._aborted:
            raise UploadAborted("upload aborted")
        body = b"".join(self._chunks)
        self._chunks = []
        return await _shielded(self._stored(body).addCallback(self._done))

    def _stored(self, body: bytes) -> "Deferred[UploadResult]":
        """With the next batch when there is one; alone, in the pool, when the batch
        found the SHA's lock taken (that wait is the lock waiter's)."""
        if self._batched is None:
            return self._run(self._store, self.sha, body)

        def alone_if_needed(result: UploadResult | None) -> "UploadResult | Deferred[UploadResult]":
            return self._run(self._store, self.sha, body) if result is None else result

        return self._batched(self.sha, body).addCallback(alone_if_needed)

    def abort(self) -> None:
        """The client went away: nothing was written yet (or the job runs to its end)."""
        if self._delegate is not None:
            self._delegate.abort()
            return
        self._aborted = True
        self._chunks = []

    def _done(self, result: UploadResult) -> UploadResult:
        if self._committed is not None:
            self._committed(self.sha, result)
        return result

