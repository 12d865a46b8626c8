"""Replicas known to hold their exact bytes: what a HEAD of a large file answers from.

A HEAD must answer the status and length a GET would.  For a small file the
HEAD reads and hashes it as the GET does (:mod:`stor.disk.local`).  Hashing a
256 MiB file for every HEAD would cost a GET's disk read, so a replica that
this process has *verified* (hashed whole: a commit, a duplicate check, a
whole GET, a HEAD) is remembered with its stamp: device, inode, size, mtime
and ctime in nanoseconds.  Any truncation, extension or rewrite of the file
changes its size or ctime (restoring the mtime with ``utime`` changes the
ctime too), so a remembered stamp that still matches ``fstat`` means the file
is the one verified; anything else is hashed again.  Bit rot that bypasses
the kernel is not seen by a stamp: a GET still verifies every byte it sends
and cuts the transfer, as before.  Memory only (per process, bounded):
after a restart the first HEAD of a large file hashes it once.
"""

import os
import threading

Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """What must not change for a verification to still hold."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class _Verified:
    LIMIT = 100_000

    def __init__(self) -> None:
        self._known: dict[str, Stamp] = {}
        self._lock = threading.Lock()

    def record(self, path: str, stamp: Stamp) -> None:
        with self._lock:
            if len(self._known) >= self.LIMIT:
                self._known.clear()  # forgetting only costs a hash
            self._known[path] = stamp

    def knows(self, path: str, stamp: Stamp) -> bool:
        with self._lock:
            return self._known.get(path) == stamp

    def forget(self, path: str) -> None:
        with self._lock:
            self._known.pop(path, None)


VERIFIED = _Verified()
