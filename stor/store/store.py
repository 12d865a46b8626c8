"""The store: the read and write policy of a stor host, with no HTTP in it.

:meth:`Store.read` answers "find this SHA": S3 first or as a fallback (per
``s3_read``), then the lookup cache, then the pairs in lookup order; every
local hit has its twin checked (repair), every whole answer is verified (a
small file before the answer, a large one on the way), a corrupt replica is
moved aside and its twin served and copied back.  It returns a
:class:`Reading`: the size, validators and part decided, and a body to
write to any consumer.

:meth:`Store.upload` starts "store this body": an
:class:`~stor.store.upload.Upload` fed by the HTTP layer, committed through
:mod:`stor.store.spool` under the SHA's lock.

The statsite keys of reads (docs/SPEC.md §6) are emitted here; the HTTP layer counts
requests and maps errors to answers.  Later tiers (S3 write-through, DELETE)
are additions to this class, not to the routes.
"""

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core import layout
from stor.core.errors import CorruptReplica, NotFound, RangeNotSatisfiable
from stor.core.metrics import Metrics, NullMetrics
from stor.core.ranges import Part, Selection
from stor.fs.health import StorageHealth
from stor.fs.locks import ShaLocks
from stor.store.body import Body, BytesBody, FileBody
from stor.store.local import Hit, LocalStore
from stor.store.quarantine import quarantine
from stor.store.repair import Repairer
from stor.store.spool import BeforeInstall, Duplicate, Spool, Stored, UploadResult
from stor.store.spool import commit as commit_spool
from stor.store.spool import open_spool
from stor.store.upload import Upload

log = Logger()


class LookupCache(Protocol):
    """``sha → path`` of local hits (:mod:`stor.peers.cache`)."""

    def get(self, sha: str) -> "Deferred[str | None]": ...

    def put(self, sha: str, path: str) -> None: ...

    def drop(self, sha: str) -> None: ...


class S3Source(Protocol):
    """The S3 read-through (:class:`stor.peers.s3.S3Reader`)."""

    def fetch(self, sha: str, head: bool, byte_range: object = None) -> "Deferred[object]": ...


class Publisher(Protocol):
    """Where every requested SHA is published (:mod:`stor.peers.amqp`)."""

    def publish(self, sha: str) -> None: ...


class _NoCache:
    def get(self, sha: str) -> "Deferred[str | None]":
        return succeed(None)

    def put(self, sha: str, path: str) -> None:
        pass

    def drop(self, sha: str) -> None:
        pass


class _NoPublisher:
    def publish(self, sha: str) -> None:
        pass


@dataclass
class Reading:
    """A read answered: what to send for the file, and the body to send it with.

    ``part`` says 200 (whole), 206 (a range) or 304; ``size`` is the whole
    file's.  :meth:`send` must be called once (it sends nothing for a HEAD or
    a 304); its Deferred fails if the body cannot be completed.
    """

    size: int
    last_modified: float | bytes
    """The file's mtime (local) or S3's ``Last-Modified`` header value."""
    part: Part
    body: Body | None
    _ended: Callable[["None | Failure"], None] = field(repr=False)

    def send(self, consumer: IConsumer) -> "Deferred[None]":
        if self.body is None:
            self._ended(None)
            return succeed(None)
        d = self.body.write_to(consumer)
        d.addBoth(self._end)
        return d

    def _end(self, result: "None | Failure") -> "None | Failure":
        self._ended(result)
        return result


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
        max_upload_size: int | None = None,
        before_install: BeforeInstall | None = None,
    ) -> None:
        self.local = local
        self.locks = locks
        self._metrics: Metrics = metrics or NullMetrics()
        self._cache: LookupCache = cache or _NoCache()
        self._s3 = s3
        self._s3_first = s3_first
        self._publisher: Publisher = publisher or _NoPublisher()
        self._repairer = repairer or Repairer(local, locks, self._metrics)
        self._max_upload_size = max_upload_size
        self._before_install = before_install

    # -- reads ------------------------------------------------------------

    async def read(self, selection: Selection, requested: str) -> Reading:
        """Find ``selection.sha`` and decide the answer; :class:`NotFound` if nowhere.

        ``requested`` is the SHA as the client spelled it (what is published).
        """
        self._publisher.publish(requested)
        start = time.monotonic()
        if self._s3 is not None and self._s3_first:
            reading = await self._read_s3(selection, start)
            if reading is not None:
                return reading
        reading = await self._read_local(selection, start)
        if reading is not None:
            return reading
        if self._s3 is not None and not self._s3_first:
            reading = await self._read_s3(selection, start)
            if reading is not None:
                return reading
        self._metrics.incr("error.get.not_found_old.count")
        raise NotFound(selection.sha)

    async def _read_s3(self, selection: Selection, start: float) -> Reading | None:
        """From S3, or None to fall through.  A plain GET is one request (its body
        verified while relayed); a conditional or ranged one asks with HEAD first,
        then fetches only what it needs."""
        assert self._s3 is not None
        sha = selection.sha
        obj = await self._s3.fetch(sha, not selection.plain)
        if obj is None:
            return None
        try:
            part = selection.part(obj.size)  # type: ignore[attr-defined]
        except RangeNotSatisfiable:
            obj.discard()  # type: ignore[attr-defined]
            raise
        wants_body = not selection.head and part.status != 304
        if wants_body and not selection.plain:
            obj = await self._s3.fetch(sha, False, part.range)
            if obj is None:
                return None
        if not wants_body:
            obj.discard()  # type: ignore[attr-defined]

        def ended(result: "None | Failure") -> None:
            if result is None:
                self._metrics.incr("success.get.ok_hcp.count")
                self._metrics.incr("success.get.ok_hcp.size", obj.size)  # type: ignore[attr-defined]
                self._metrics.timing("success.get.ok_hcp.time", _ms(start))

        return Reading(obj.size, obj.last_modified, part,  # type: ignore[attr-defined]
                       obj if wants_body else None, ended)  # type: ignore[arg-type]

    async def _read_local(self, selection: Selection, start: float) -> Reading | None:
        sha = selection.sha
        hit = await self._find(sha, selection.head)
        while hit is not None and hit.data is not None and _digest(hit.data) != sha:
            self._corrupt(hit, sha, _digest(hit.data))
            hit = await self._find(sha, selection.head, exclude={hit.storage})
        if hit is None:
            return None
        try:
            part = selection.part(hit.size)
        except RangeNotSatisfiable:
            hit.close()
            raise
        body = self._body(hit, sha, part, selection.head)
        server = layout.server_name(hit.storage)

        def ended(result: "None | Failure") -> None:
            if result is None:
                self._metrics.incr(f"success.get.ok_old.{server}.count")
                self._metrics.incr(f"success.get.ok_old.{server}.size", hit.size)
                self._metrics.timing(f"success.get.ok_old.{server}.time", _ms(start))
            elif result.check(CorruptReplica):
                self._corrupt(hit, sha, result.value.actual)

        return Reading(hit.size, hit.mtime, part, body, ended)

    def _body(self, hit: Hit, sha: str, part: Part, head: bool) -> Body | None:
        if head or part.status == 304:
            hit.close()
            return None
        first, length = (part.range.first, part.range.length) if part.range else (0, hit.size)
        if hit.data is not None:
            return BytesBody(hit.data[first:first + length])
        assert hit.file is not None
        return FileBody(hit.file, hit.path, first, length, self.local.run,
                        verify=sha if part.whole else None)

    async def _find(self, sha: str, head: bool, exclude: frozenset[str] | set[str] = frozenset()
                    ) -> Hit | None:
        """The cached path if it still holds the file, else a lookup (then cached)."""
        start = time.monotonic()
        path = await self._cache.get(sha)
        self._metrics.timing("cache.time", _ms(start))
        if path is not None and layout.storage_of(path, sha) not in exclude:
            hit = await self.local.find_at(path, sha, head)
            if hit is not None:
                self._metrics.incr("cache.hit")
                self._repairer.found(sha, hit.storage)
                return hit
            self._cache.drop(sha)  # deleted or moved behind our back: look again
        self._metrics.incr("cache.miss")
        start = time.monotonic()
        hit = await self.local.find(sha, head, exclude)
        self._metrics.timing("lookup.time", _ms(start))
        if hit is None:
            tried = len(self.local.storages) - len(exclude)
            self._metrics.incr(f"lookup.attempt.{tried}.count")
            return None
        self._metrics.incr(f"lookup.attempt.{hit.attempt}.count")
        self._cache.put(sha, hit.path)
        self._repairer.found(sha, hit.storage)
        return hit

    def _corrupt(self, hit: Hit, sha: str, actual: str) -> None:
        """A replica does not hash to its name: never serve it again, bring the twin back."""
        self._metrics.incr("error.get.corrupt_replica.count")
        log.error("corrupt replica {path}: hashes to {actual}; moving it to quarantine",
                  path=hit.path, actual=actual, sha=sha)
        self._cache.drop(sha)
        d = self.local.run(quarantine, hit.storage, sha, hit.ident, self.locks)
        d.addCallbacks(self._quarantined, self._quarantine_failed, callbackArgs=(sha, hit),
                       errbackArgs=(hit,))

    def _quarantined(self, where: str | None, sha: str, hit: Hit) -> None:
        if where is not None:
            self._metrics.incr("repair.quarantined.count")
            log.warn("{path} moved to {where}", path=hit.path, where=where)
            self._repairer.replace(sha, hit.storage)

    def _quarantine_failed(self, failure: Failure, hit: Hit) -> None:
        log.failure("could not quarantine {path}", failure=failure, path=hit.path)

    # -- uploads ----------------------------------------------------------

    def upload(self, sha: str, length: int | None) -> Upload:
        """Start receiving the body of ``sha`` (``length``: its declared size, if any)."""
        return Upload(sha, length, self.local.run, self._prepare, self._commit,
                      max_size=self._max_upload_size)

    def _prepare(self, sha: str, length: int | None) -> Duplicate | Spool:
        """Blocking: the duplicate check, then a pair with room and temps on it."""
        with self.locks.hold(sha):
            paths, whole = self.local.existing_now(sha)
        if whole:
            return Duplicate(paths)
        return open_spool(self.local, sha, length)

    def _commit(self, spool: Spool) -> UploadResult:
        return commit_spool(spool, self.local, self.locks, self._before_install)

    def stored(self, result: UploadResult) -> None:
        """An upload was answered: log and count what happened to the storages."""
        if isinstance(result, Stored):
            for failure in result.failures:
                self._member_failed(failure.storage, str(failure))

    def _member_failed(self, storage: str, why: str) -> None:
        self._metrics.incr(f"error.storage.{layout.server_name(storage)}.count")
        log.warn("storage {storage} failed: {error}", storage=storage, error=why)

    # -- health -----------------------------------------------------------

    def health(self, with_free: bool = True) -> "Deferred[list[StorageHealth]]":
        """Every storage as seen now (``/status``, readiness, metrics)."""
        return self.local.health(with_free)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

