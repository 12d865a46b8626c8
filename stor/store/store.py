"""The store: the read and write policy of a stor host, with no HTTP in it.

:meth:`Store.read` answers "find this SHA": S3 first or as a fallback (per
``s3_read``), then the lookup cache, then the pairs in lookup order; every
local hit has its twin checked (repair), every whole answer is verified (a
small file before the answer, a large one on the way), a corrupt replica is
moved aside and its twin served and copied back.  It returns a
:class:`~stor.store.interface.Reading`: the size, validators and part
decided, and a body to write to any consumer.  The HTTP layer sees this class
only as :class:`~stor.store.interface.StoreApi`.

:meth:`Store.upload` starts "store this body": an
:class:`~stor.store.upload.Upload` fed by the HTTP layer, committed through
:mod:`stor.disk.spool` under the SHA's lock.

The statsite keys of reads (docs/SPEC.md §6) are emitted here; the HTTP layer counts
requests and maps errors to answers.  Later tiers (S3 write-through, DELETE)
are additions to this class, not to the routes.
"""

import hashlib
import os
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core import layout
from stor.core.errors import (
    CorruptReplica, NotFound, RangeNotSatisfiable, S3Unavailable, StorageFailure,
)
from stor.core.metrics import Metrics, NullMetrics
from stor.core.ranges import ByteRange, Part, Selection
from stor.disk.health import StorageHealth
from stor.disk.writeready import write_blockers
from stor.disk import anchored
from stor.disk.locks import ShaLocks, Tombstones
from stor.disk.lockwait import LockWaiter
from stor.disk.body import Body, BytesBody, FileBody
from stor.disk.duplicate import Damaged
from stor.disk.verified import VERIFIED
from stor.s3 import outbox as outbox_markers
from stor.disk.local import Hit, LocalStore, Unreadable
from stor.disk.corrupt import CorruptReplicas, misread, reread_blocking
from stor.disk.readfaults import fault_of
from stor.disk.repair import Repairer
from stor.core.results import Duplicate, Stored, UploadResult
from stor.disk.spool import BeforeInstall, Spool
from stor.disk.spool import commit as commit_spool
from stor.disk.spool import hand_on as hand_on_spool
from stor.disk.spool import open_spool_placed, set_aside_failed
from stor.disk.groupsync import GROUP_SYNC
from stor.disk.batch import SmallBatcher
from stor.disk.small import SMALL_MAX, LockTaken, SmallJob, store_small
from stor.store.interface import Reading
from stor.store.small import SmallUpload
from stor.store.upload import Upload

if TYPE_CHECKING:  # a type only: the store sees S3 through S3Source
    from stor.s3.read import S3Object

log = Logger()


class ReplicasUnreadable(StorageFailure):
    """A file no replica could deliver, some failing to read (not absent): 500."""


class LookupCache(Protocol):
    """``sha → path`` of local hits (:mod:`stor.cache.lookup`)."""

    def get(self, sha: str) -> "Deferred[str | None]": ...

    def peek(self, sha: str) -> str | None: ...

    def put(self, sha: str, path: str) -> None: ...

    def drop(self, sha: str) -> None: ...


class S3Source(Protocol):
    """The S3 read-through (:class:`stor.s3.read.S3Reader`)."""

    def fetch(self, sha: str, head: bool,
              byte_range: ByteRange | None = None) -> "Deferred[S3Object | None]": ...


class Publisher(Protocol):
    """Where every requested SHA is published (:mod:`stor.amqp.publish`)."""

    def publish(self, sha: str) -> None: ...


class S3Objects(Protocol):
    """The bucket, for what a DELETE does there (:class:`stor.s3.put.S3Writer`)."""

    def exists(self, sha: str) -> "Deferred[bool]": ...

    def delete(self, sha: str) -> "Deferred[None]": ...


class Outbox(Protocol):
    """The S3 write-through's queue (:class:`stor.s3.outbox.Outbox`)."""

    def queue(self, sha: str) -> None: ...


class _NoCache:
    def get(self, sha: str) -> "Deferred[str | None]":
        return succeed(None)

    def peek(self, sha: str) -> str | None:
        return None

    def put(self, sha: str, path: str) -> None:
        pass

    def drop(self, sha: str) -> None:
        pass


class _NoPublisher:
    def publish(self, sha: str) -> None:
        pass


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000.0


class Store:
    """A host's storage pairs, with the cache, S3, publishing and repair around them."""

    def __init__(
        self,
        local: LocalStore,
        locks: ShaLocks,
        *,
        metrics: Metrics | None = None,
        cache: LookupCache | None = None,
        s3: S3Source | None = None,
        s3_first: bool = True,
        publisher: Publisher | None = None,
        repairer: Repairer | None = None,
        corrupt: CorruptReplicas | None = None,
        max_upload_size: int | None = None,
        before_install: BeforeInstall | None = None,
        outbox: Outbox | None = None,
        s3_objects: S3Objects | None = None,
        fill_local: bool = False,
        peers: "list[S3Source] | None" = None,
        clock: IReactorTime | None = None,
        batcher: SmallBatcher | None = None,
    ) -> None:
        self.local = local
        self._batcher = batcher
        self.locks = locks
        # a SHA's lock is waited for on the reactor (``clock``), never in a pool thread
        self._waiter = LockWaiter(locks, local.run, clock)
        self.tombstones = Tombstones(locks)
        self._metrics: Metrics = metrics or NullMetrics()
        self._cache: LookupCache = cache or _NoCache()
        self._s3 = s3
        self._s3_first = s3_first
        self._publisher: Publisher = publisher or _NoPublisher()
        self._repairer = repairer or Repairer(local, locks, self._metrics)
        self._corrupt = corrupt or CorruptReplicas(local, locks, self._metrics, self._repairer,
                                                   self._cache.drop)
        self._max_upload_size = max_upload_size
        self._outbox = outbox
        self._before_install = before_install or (self._record_for_s3 if outbox else None)
        self._s3_objects = s3_objects
        self._fill_local = fill_local
        self._filling: set[str] = set()
        self._peers: list[S3Source] = peers or []
        """The fleet's other hosts, asked on a miss (:mod:`stor.s3.peers`)."""

    # -- reads ------------------------------------------------------------

    def read(self, selection: Selection, requested: str,
             local_only: bool = False) -> "Deferred[Reading]":
        """Find ``selection.sha`` and decide the answer; :class:`NotFound` if nowhere,
        :class:`S3Unavailable` if not here and S3 could not say.

        ``requested`` is the SHA as the client spelled it (what is published).
        ``local_only``: a fleet peer asks (:mod:`stor.s3.peers`): the local disks only.
        The commonest read — a small file at the path remembered in this process, in
        the page cache — is decided before this returns (the Deferred has fired: the
        fast lane answers it at once); any other goes on in a coroutine.
        """
        if not local_only:
            reading = self._read_now(selection, requested)
            if reading is not None:
                return succeed(reading)
        return Deferred.fromCoroutine(self._read(selection, requested, local_only))

    async def _read(self, selection: Selection, requested: str, local_only: bool) -> Reading:
        if local_only:
            reading = await self._read_local(selection, time.monotonic())
            if reading is None:
                raise NotFound(selection.sha)
            return reading
        self._publisher.publish(requested)
        start = time.monotonic()
        unknown: S3Unavailable | None = None
        if self._s3 is not None and self._s3_first:
            reading, unknown = await self._s3_or_unknown(selection, start)
            if reading is not None:
                return reading
        unreadable: ReplicasUnreadable | None = None
        try:
            reading = await self._read_local(selection, start)
        except ReplicasUnreadable as e:
            reading, unreadable = None, e
        if reading is not None:
            return reading
        if self._s3 is not None and not self._s3_first:
            reading, unknown = await self._s3_or_unknown(selection, start)
            if reading is not None:
                return reading
        for peer in self._peers:  # stored elsewhere while this host took no uploads?
            try:
                reading = await self._read_s3(selection, start, peer, "peer")
            except S3Unavailable:
                continue  # a peer that cannot say does not make a 404 a 503
            if reading is not None:
                return reading
        if unreadable is not None:
            raise unreadable  # stored, maybe: never a 404
        if unknown is not None:  # the file may well exist: not a 404 (docs/SPEC.md §9)
            raise unknown
        self._metrics.incr("error.get.not_found_old.count")
        raise NotFound(selection.sha)

    async def _s3_or_unknown(self, selection: Selection, start: float
                             ) -> "tuple[Reading | None, S3Unavailable | None]":
        """:meth:`_read_s3`, with S3 being unable to say kept as a value: a local miss
        after it is not a 404 (docs/SPEC.md §9)."""
        try:
            return await self._read_s3(selection, start), None
        except S3Unavailable as e:
            return None, e

    async def _read_s3(self, selection: Selection, start: float,
                       source: "S3Source | None" = None, kind: str = "hcp") -> Reading | None:
        """From S3 (or a fleet peer: ``source``, ``kind`` "peer"), or None to fall
        through.  A plain GET is one request (its body verified while relayed); a
        conditional or ranged one asks with HEAD first, then fetches only what it needs."""
        s3 = source or self._s3
        assert s3 is not None
        sha = selection.sha
        obj = await s3.fetch(sha, not selection.plain)
        if obj is None:
            return None
        try:
            part = selection.part(obj.size)
        except RangeNotSatisfiable:
            obj.discard()
            raise
        wants_body = not selection.head and part.status != 304
        if wants_body and not selection.plain:
            obj = await s3.fetch(sha, False, part.range)
            if obj is None:
                return None
        if not wants_body:
            obj.discard()

        def ended(result: "None | Failure") -> None:
            if result is None:
                self._metrics.incr(f"success.get.ok_{kind}.count")
                size = obj.size
                self._metrics.incr(f"success.get.ok_{kind}.size", size)
                self._metrics.timing(f"success.get.ok_{kind}.time", _ms(start))
                if self._fill_local and source is None:
                    self._fill(sha)

        return Reading(obj.size, obj.last_modified, part,
                       obj if wants_body else None, ended)

    async def _read_local(self, selection: Selection, start: float) -> Reading | None:
        sha = selection.sha
        hit = await self._find(sha, selection.head)
        tried: set[str] = set()
        while isinstance(hit, Hit) and (actual := _wrong_digest(hit, sha)) is not None:
            again = await self._read_again(hit, sha, actual)
            if again is not None and again.digest == sha:
                hit = again  # wrong once, right from the disk: a read fault, not a corruption
                break
            if again is not None:  # still wrong from the disk: never served again
                self._corrupt.found(hit, sha, again.digest or actual, confirmed=True)
            tried.add(hit.storage)
            hit = await self._find(sha, selection.head, exclude=tried)
        if isinstance(hit, Unreadable):
            self._metrics.incr("error.get.unreadable.count")
            log.error("cannot read {sha} from any replica: {why}", sha=sha, why=str(hit))
            raise ReplicasUnreadable(f"cannot read {sha}: {hit}")
        if hit is None:
            return None
        if hit.digest is not None and hit.stamp is not None:
            VERIFIED.record(hit.path, hit.stamp)  # a large HEAD hashed it: the next need not
        try:
            part = selection.part(hit.size)
        except RangeNotSatisfiable:
            hit.close()
            raise
        return self._local_reading(hit, sha, part, selection.head, start)

    async def _read_again(self, hit: Hit, sha: str, actual: str) -> Hit | None:
        """``hit``, which hashed to ``actual``, read again from the disk (not the page
        cache), with the bytes (small) and digest now read; None when it cannot be read
        (a read fault) or is no longer that file.  Right this time: a read fault."""
        try:
            again = await self.local.run(reread_blocking, hit.path, hit.ident,
                                         hit.data is not None)
        except OSError as e:
            self.local.read_faults.record(fault_of(hit.storage, hit.path, e))
            return None
        if again is None:
            return None
        digest, data = again
        if digest == sha:
            self.local.read_faults.record(misread(hit, actual))
        if data is not None:
            return replace(hit, data=data, size=len(data), digest=digest)
        return replace(hit, digest=digest)

    def _read_now(self, selection: Selection, requested: str) -> Reading | None:
        """:meth:`read` when it needs no waiting at all: the path remembered in this
        process, a small file (or a HEAD) in the page cache, no S3 to ask first.

        None when it would wait (or has anything to report, such as a corrupt
        replica): then nothing was done, and the coroutine does it all.  The
        answer itself is decided by the same steps.
        """
        if self._s3 is not None and self._s3_first:
            return None
        sha = selection.sha
        start = time.monotonic()
        path = self._cache.peek(sha)
        if path is None:
            return None
        hit = self.local.find_at_nowait(path, sha, selection.head)
        if not isinstance(hit, Hit):
            return None
        if hit.file is not None:
            hit.close()  # a large file: its first block is read and checked off the loop
            return None
        if _wrong_digest(hit, sha) is not None:
            return None
        try:
            part = selection.part(hit.size)
        except RangeNotSatisfiable:
            return None
        self._publisher.publish(requested)
        self._metrics.timing("cache.time", _ms(start))
        self._metrics.incr("cache.hit")
        self._repairer.found(sha, hit.storage, hit.size)
        return self._local_reading(hit, sha, part, selection.head, start)

    def _local_reading(self, hit: Hit, sha: str, part: Part, head: bool,
                       start: float) -> Reading:
        body = self._body(hit, sha, part, head)
        server = self.local.server_name(hit.storage)

        def ended(result: "None | Failure") -> None:
            if result is None:
                if hit.file is not None and part.whole and hit.stamp is not None:
                    VERIFIED.record(hit.path, hit.stamp)  # hashed whole on the way out
                self._metrics.incr(f"success.get.ok_old.{server}.count")
                if not head:  # as the old service: a HEAD sends no bytes, so no .size/.time
                    self._metrics.incr(f"success.get.ok_old.{server}.size", hit.size)
                    self._metrics.timing(f"success.get.ok_old.{server}.time", _ms(start))
            elif isinstance(result.value, CorruptReplica):
                self._corrupt.found(hit, sha, result.value.actual)

        return Reading(hit.size, hit.mtime, part, body, ended, self.local.call_from_thread)

    def _body(self, hit: Hit, sha: str, part: Part, head: bool) -> Body | None:
        if head or part.status == 304:
            hit.close()
            return None
        first, length = (part.range.first, part.range.length) if part.range else (0, hit.size)
        if hit.data is not None:
            return BytesBody(hit.data[first:first + length])
        assert hit.file is not None
        return FileBody(hit.file, hit.path, first, length, self.local.run,
                        verify=sha if part.whole else None, size=hit.size,
                        twin=self.local.twin_path(hit.path, sha),
                        on_fault=lambda path, error: self._read_fault(sha, path, error))

    def _read_fault(self, sha: str, path: str, error: BaseException) -> None:
        """A body's replica failed to read (the body went on from its twin, or was cut)."""
        storage = layout.storage_of(path, sha) or os.path.dirname(path)
        self.local.read_faults.record(fault_of(storage, path, error))

    async def _find(self, sha: str, head: bool, exclude: frozenset[str] | set[str] = frozenset()
                    ) -> Hit | Unreadable | None:
        """The cached path if it still holds the file, else a lookup (then cached).

        A cached replica that cannot be read is passed over for the lookup,
        which tries every replica; :class:`Unreadable` when none could deliver
        and some failed."""
        start = time.monotonic()
        path = await self._cache.get(sha)
        self._metrics.timing("cache.time", _ms(start))
        if path is not None and layout.storage_of(path, sha) not in exclude:
            hit = await self.local.find_at(path, sha, head)
            self._faults_of(hit)
            if isinstance(hit, Hit):
                self._metrics.incr("cache.hit")
                self._repairer.found(sha, hit.storage, hit.size)
                return hit
            self._cache.drop(sha)  # deleted or moved behind our back: look again
        self._metrics.incr("cache.miss")
        start = time.monotonic()
        hit = await self.local.find(sha, head, exclude)
        self._faults_of(hit)
        self._metrics.timing("lookup.time", _ms(start))
        if not isinstance(hit, Hit):
            tried = len(self.local.storages) - len(exclude)
            self._metrics.incr(f"lookup.attempt.{tried}.count")
            return hit
        self._metrics.incr(f"lookup.attempt.{hit.attempt}.count")
        self._cache.put(sha, hit.path)
        self._repairer.found(sha, hit.storage, hit.size, trusting=False)  # a search: look
        return hit

    def _faults_of(self, hit: Hit | Unreadable | None) -> None:
        """Tell the read faults a lookup met on its way (replicas passed over)."""
        if hit is not None:
            for fault in hit.faults:
                self.local.read_faults.record(fault)

    # -- uploads ----------------------------------------------------------

    def upload(self, sha: str, length: int | None, *, counted: bool = True
               ) -> "Upload | SmallUpload":
        """Start receiving the body of ``sha`` (``length``: its declared size, if any).

        A declared length up to :data:`~stor.disk.small.SMALL_MAX` is stored in one
        job with a group commit (:mod:`stor.store.small`); others stream.
        ``counted``: its duplicate lookup is a client's (a POST), counted as such."""
        if length is not None and length <= SMALL_MAX:
            return self._small_upload(sha, length, counted)
        return self._streaming_upload(sha, length, counted, time.time())

    def _small_upload(self, sha: str, length: int, counted: bool) -> SmallUpload:
        started = time.time()

        def still_wanted(sha: str) -> bool:  # a DELETE since the upload began wins
            return not self.tombstones.deleted_since(sha, started)

        def looked_up(ms: float) -> None:
            self.local.call_from_thread(self._looked_up, ms)

        def store(sha: str, body: bytes) -> UploadResult:
            return store_small(sha, body, self.local, self.locks, GROUP_SYNC,
                               self._before_install, still_wanted, self._damaged_from_thread,
                               looked_up if counted else None)

        def batched(sha: str, body: bytes) -> "Deferred[UploadResult | None]":
            assert self._batcher is not None
            job = SmallJob(sha, body, self._before_install, still_wanted,
                           self._damaged_from_thread)

            def landed(outcome: "UploadResult | LockTaken | Failure"
                       ) -> "UploadResult | Failure | None":
                if counted and job.lookup_ms is not None:
                    self._looked_up(job.lookup_ms)
                return None if isinstance(outcome, LockTaken) else outcome

            return self._batcher.submit(job).addBoth(landed)

        # alone, the whole job holds the SHA's lock, waited for on the reactor
        # (stor.disk.lockwait); store_small's own holds are that lock (reentrant in a thread)
        return SmallUpload(sha, length, partial(self._waiter.run_locked, sha), store,
                           lambda: self._streaming_upload(sha, length, counted, started),
                           max_size=self._max_upload_size, committed=self._committed,
                           batched=None if self._batcher is None else batched)

    def _streaming_upload(self, sha: str, length: int | None, counted: bool,
                          started: float) -> Upload:

        def still_wanted(sha: str) -> bool:  # a DELETE since the upload began wins
            return not self.tombstones.deleted_since(sha, started)

        def commit(spool: Spool) -> UploadResult:
            return commit_spool(spool, self.local, self.locks, self._before_install, still_wanted,
                                self._damaged_from_thread)

        def prepare(sha: str, length: int | None) -> Duplicate | Spool:
            return self._prepare(sha, length, counted)

        def hand_on(lost: Spool, size: int, body: list[bytes] | None) -> Spool:
            return hand_on_spool(self.local, lost, size, body)

        return Upload(sha, length, self.local.run, prepare, commit,
                      max_size=self._max_upload_size, committed=self._committed,
                      run_locked=partial(self._waiter.run_locked, sha), hand_on=hand_on)

    def _prepare(self, sha: str, length: int | None, counted: bool) -> Duplicate | Spool:
        """Blocking: the duplicate check (exact bytes, durably: :mod:`stor.disk.duplicate`),
        then a pair with room and temps on it."""
        with self.locks.hold(sha):
            start = time.monotonic()
            existing = self.local.existing_blocking(sha)
            if counted:
                self.local.call_from_thread(self._looked_up, _ms(start))
        for damage in existing.damaged:
            self._damaged_from_thread(sha, damage)
        if existing.whole:
            return Duplicate(existing.paths)
        return open_spool_placed(self.local, sha, length)

    def _looked_up(self, ms: float) -> None:
        """A POST's duplicate lookup, counted as the old service counted it: it
        tried every storage (docs/SPEC.md §6)."""
        self._metrics.timing("lookup.time", ms)
        self._metrics.incr(f"lookup.attempt.{len(self.local.storages)}.count")

    def _damaged_from_thread(self, sha: str, damage: Damaged) -> None:
        """The duplicate check read a replica that does not hash to its name: on the
        reactor, quarantine it and repair it from its twin, as a GET would."""
        hit = Hit(damage.storage, damage.path, damage.size, damage.mtime, 0, damage.ident)
        self.local.call_from_thread(self._corrupt.found, hit, sha, damage.actual)

    def _committed(self, sha: str, result: UploadResult) -> None:
        """An upload is in place: log and count failed storages, queue it for S3."""
        if isinstance(result, Stored):
            for failure in result.failures:
                self._member_failed(failure.storage, str(failure))
            set_aside_failed(self.local, result.failures)  # until their probe passes
            if self._outbox is not None:
                self._outbox.queue(sha)

    def _record_for_s3(self, sha: str, pair: tuple[str, str]) -> None:
        """Blocking, under the SHA's lock: the write-through's durable marker, before the 201."""
        outbox_markers.record(sha, pair)

    def _fill(self, sha: str) -> None:
        """Served from S3: store it on a local pair too (``s3_fill_local``), in the background,
        through the same verified upload and commit as a POST."""
        if sha in self._filling or self._s3 is None:
            return
        self._filling.add(sha)
        d = Deferred.fromCoroutine(self._fill_from_s3(sha))
        d.addErrback(lambda f: log.warn("could not fill {sha} from S3: {error}", sha=sha,
                                        error=f.getErrorMessage()))
        d.addBoth(lambda _: self._filling.discard(sha))

    async def _fill_from_s3(self, sha: str) -> None:
        assert self._s3 is not None
        obj = await self._s3.fetch(sha, False)
        if obj is None:
            return
        upload = self.upload(sha, obj.size, counted=False)
        if await upload.screen() is not None:
            obj.discard()
            return  # already stored here
        await obj.write_to(upload)
        result = await upload.finish()
        if isinstance(result, Stored):
            self._metrics.incr("s3.fill.count")
            log.info("filled {sha} from S3 to {paths}", sha=sha, paths=result.paths)

    # -- deletes ----------------------------------------------------------

    async def delete(self, sha: str) -> list[str]:
        """Remove ``sha`` from every storage, and from S3 when configured.

        Holds the SHA's lock while it removes the local files, and leaves a
        tombstone, so no repair, fill, scrub or upload in flight brings the
        file back.  Returns the local paths removed; :class:`NotFound` when
        the file was nowhere.  A storage that cannot remove its copy fails the
        request (after the others were removed), naming it; so does S3.
        """
        removed, failures = await self._waiter.run_locked(sha, self._delete_blocking, sha)
        self._cache.drop(sha)
        in_s3 = False
        if self._s3_objects is not None:
            try:
                in_s3 = await self._s3_objects.exists(sha)
                if in_s3:
                    await self._s3_objects.delete(sha)
            except Exception as e:  # the bucket is one more member that could not delete
                failures.append(f"S3: {e}")
        if failures:
            raise StorageFailure("cannot delete: " + "; ".join(failures))
        if not removed and not in_s3:
            raise NotFound(sha)
        self._metrics.incr("success.delete.count")
        return removed

    def _delete_blocking(self, sha: str) -> tuple[list[str], list[str]]:
        """Blocking: under the SHA's lock, bury it and remove every local copy."""
        removed: list[str] = []
        failures: list[str] = []
        with self.locks.hold(sha):
            self.tombstones.bury(sha)
            outbox_markers.forget(sha, self.local.storages)
            for storage in self.local.storages:
                path = layout.file_path(storage, sha)
                try:
                    anchored.unlink_durably(storage, path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as e:
                    failures.append(f"{storage}: {e.strerror}")
                    continue
                removed.append(path)
        return removed, failures

    def _member_failed(self, storage: str, why: str) -> None:
        self._metrics.incr(f"error.storage.{self.local.server_name(storage)}.count")
        log.warn("storage {storage} failed: {error}", storage=storage, error=why)

    # -- health -----------------------------------------------------------

    def health(self, with_free: bool = True) -> "Deferred[list[StorageHealth]]":
        """Every storage as seen now (``/status``, readiness, metrics)."""
        return self.local.health(with_free)

    def writable(self, storage: str) -> bool:
        """Whether ``writable_pairs_regex`` lets ``storage`` take new files."""
        return self.local.writable(storage)

    def not_ready(self, health: list[StorageHealth]) -> list[str]:
        """Why this host should get no traffic (empty: ready): see
        :meth:`~stor.disk.local.LocalStore.not_ready`."""
        return self.local.not_ready(health)

    async def write_blockers(self, headroom: int) -> list[str]:
        """Why this host should get no uploads now (empty: write-ready): see
        :func:`~stor.disk.writeready.write_blockers`."""
        health = await self.health()
        return write_blockers(self.local.pairs, self.local.writable, health, headroom)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wrong_digest(hit: Hit, sha: str) -> str | None:
    """What ``hit`` hashes to when that is known now and is not ``sha`` (else None).

    A small file was read whole (GET and HEAD alike); a large HEAD was hashed
    unless this process had verified that very file (:mod:`stor.disk.verified`);
    a large GET is verified while it is sent."""
    actual = _digest(hit.data) if hit.data is not None else hit.digest
    return actual if actual is not None and actual != sha else None

