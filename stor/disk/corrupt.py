"""A replica found corrupt: never served again, moved aside, its twin copied back.

Whoever finds one — a read (:class:`stor.store.store.Store`) or the S3 outbox
reading a file to upload it (:class:`stor.s3.outbox.Outbox`) — tells the one
:class:`CorruptReplicas` of the process.  It is built from the disk tier alone
(plus the lookup cache's ``forget``), before both of them, so the daemon is
assembled in layer order with nothing bound late.
"""

import os
from collections.abc import Callable

from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core import layout
from stor.core.metrics import Metrics
from stor.disk.local import Hit, LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.quarantine import quarantine
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

    def found(self, hit: Hit, sha: str, actual: str) -> None:
        """A replica does not hash to its name: never serve it again, bring the twin back."""
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
