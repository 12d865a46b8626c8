"""A replica found corrupt: never served again, moved aside, its twin copied back.

Only a replica that still hashes wrong when read again *from the disk* is
corrupt: the page cache is dropped for the file (``posix_fadvise
DONTNEED``) and the file hashed anew before it is moved aside
(:func:`reread_blocking`).  Bytes that came out wrong once (a bad cable, a
flaky controller, a read fault) and right the second time are a read fault
of the storage (:mod:`stor.disk.readfaults`), not a reason to quarantine the
only good-looking copy of a file.

Whoever finds one — a read (:class:`stor.store.store.Store`) or the S3 outbox
reading a file to upload it (:class:`stor.s3.outbox.Outbox`) — tells the one
:class:`CorruptReplicas` of the process.  It is built from the disk tier alone
(plus the lookup cache's ``forget``), before both of them, so the daemon is
assembled in layer order with nothing bound late.
"""

import hashlib
import os
from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core import layout
from stor.core.metrics import Metrics
from stor.disk.duplicate import hash_fd
from stor.disk.local import Hit, LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.quarantine import quarantine
from stor.disk.readfaults import ReadFault, fault_of
from stor.disk.repair import Repairer

log = Logger()


class CorruptReplicas:
    """Counts, logs and quarantines corrupt replicas, then has the repairer replace them.

    ``forget(sha)`` drops a remembered path (the lookup cache), so the next
    read looks again.
    """

    def __init__(self, local: LocalStore, locks: ShaLocks, metrics: Metrics,
                 repairer: Repairer, forget: Callable[[str], None]) -> None:
        self._local = local
        self._locks = locks
        self._metrics = metrics
        self._repairer = repairer
        self._forget = forget

    def found(self, hit: Hit, sha: str, actual: str, confirmed: bool = False) -> None:
        """A replica did not hash to its name: read it again from the disk (unless
        ``confirmed``: the caller just did), and if it still does not, never serve it
        again and bring the twin back."""
        if confirmed:
            self._corrupt(hit, sha, actual)
            return
        d = self._local.run(reread_blocking, hit.path, hit.ident, False)
        d.addCallbacks(self._reread, self._reread_failed, callbackArgs=(hit, sha, actual),
                       errbackArgs=(hit,))

    def _reread(self, again: "tuple[str, bytes | None] | None", hit: Hit, sha: str,
                actual: str) -> None:
        if again is None:
            return  # replaced or removed meanwhile: nothing to move aside
        if again[0] == sha:
            self._local.read_faults.record(misread(hit, actual))
            return
        self._corrupt(hit, sha, again[0])

    def _reread_failed(self, failure: Failure, hit: Hit) -> None:
        error = failure.value
        if isinstance(error, OSError):
            self._local.read_faults.record(fault_of(hit.storage, hit.path, error))
        else:
            log.failure("could not read {path} again", failure=failure, path=hit.path)

    def _corrupt(self, hit: Hit, sha: str, actual: str) -> None:
        self._metrics.incr("error.get.corrupt_replica.count")
        log.error("corrupt replica {path}: hashes to {actual}; moving it to quarantine",
                  path=hit.path, actual=actual, sha=sha)
        self._forget(sha)
        d = self._local.run(quarantine, hit.storage, sha, hit.ident, self._locks)
        d.addCallbacks(self._quarantined, self._quarantine_failed, callbackArgs=(sha, hit),
                       errbackArgs=(hit,))

    def found_at(self, path: str) -> None:
        """Someone else (the S3 outbox) read ``path`` and found it corrupt."""
        sha = os.path.basename(path)[:-4].lower()
        storage = layout.storage_of(path, sha)
        if storage is None:
            return
        d = self._local.run(os.stat, path)
        d.addCallback(lambda st: self.found(
            Hit(storage, path, st.st_size, st.st_mtime, 0, (st.st_dev, st.st_ino)), sha,
            "(read by the S3 outbox)"))
        d.addErrback(lambda f: None)  # gone meanwhile

    def _quarantined(self, where: str | None, sha: str, hit: Hit) -> None:
        if where is not None:
            self._metrics.incr("repair.quarantined.count")
            log.warn("{path} moved to {where}", path=hit.path, where=where)
            self._repairer.replace(sha, hit.storage)

    def _quarantine_failed(self, failure: Failure, hit: Hit) -> None:
        log.failure("could not quarantine {path}", failure=failure, path=hit.path)


def misread(hit: Hit, actual: str) -> ReadFault:
    """The read fault of a replica that hashed to ``actual`` once and right again from disk."""
    return ReadFault(hit.storage, hit.path, "misread",
                     f"read as bytes hashing to {actual}, right when read again from the disk")


def reread_blocking(path: str, ident: tuple[int, int], whole: bool
                    ) -> "tuple[str, bytes | None] | None":
    """Blocking: ``path`` read again from the disk, not from the page cache (its cached
    pages are dropped first): (its sha256, its bytes when ``whole``), or None when the
    path no longer names the file ``ident`` (``(st_dev, st_ino)``).  ``OSError`` when
    it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != ident:
            return None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if not whole:
            return hash_fd(fd), None
        data = os.pread(fd, st.st_size + 1, 0)
        return hashlib.sha256(data).hexdigest(), data
    finally:
        os.close(fd)
