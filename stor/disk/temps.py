"""Temp files: where uploads and copies are written before they are renamed into place.

Each storage has its own temp directory (``<storage>/.stor-tmp``), on the
same filesystem as its files so the final rename is atomic.  A temp file is
*owned* while it is written: its writer holds an exclusive ``flock`` on it
from creation until it is renamed or removed.  The sweeper (the daemon's
timer, ``stor scrub``) removes only temp files nobody holds, so a live upload
is never swept, however long its client pauses and whichever process writes
it; a process that dies releases its locks, and its temp files become stale.
"""

import fcntl
import os
import secrets
import time
from dataclasses import dataclass

from stor.core import layout
from stor.disk.fsio import make_dirs, unlink_quietly

ORPHAN_AGE = 10.0
"""Seconds an unowned temp file must have been idle before it is removed
(covers the moment between its creation and its writer taking the lock)."""


def temp_dir(storage: str) -> str:
    """The temp directory of ``storage``."""
    return os.path.join(storage, layout.TEMP_DIR)


def temp_name(sha: str) -> str:
    """A fresh temp file name: ``<sha>.<pid>.<random>.tmp``."""
    return f"{sha}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@dataclass
class OwnedTemp:
    """An open, locked temp file; ``close`` releases it (rename or remove it first)."""

    storage: str
    path: str
    fd: int

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def discard(self) -> None:
        """Remove the file and release it; safe to call more than once."""
        if self.fd >= 0:
            unlink_quietly(self.path)
        self.close()


def create_temp(storage: str, sha: str, owner: tuple[int, int] | None = None) -> OwnedTemp:
    """Create and lock a new temp file for ``sha`` on ``storage`` (blocking).

    The temp directory is created when missing, never the storage itself.
    """
    directory = temp_dir(storage)
    make_dirs(storage, directory, owner)
    path = os.path.join(directory, temp_name(sha))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    return OwnedTemp(storage, path, fd)


def is_stale_temp(path: str, now: float | None = None) -> bool:
    """Whether nobody owns the temp file at ``path`` and it has been idle a while."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False  # gone meanwhile (its upload finished), or not ours to judge
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a writer holds it
        idle = (now if now is not None else time.time()) - os.fstat(fd).st_mtime
        return idle >= ORPHAN_AGE
    finally:
        os.close(fd)


def sweep_temp_dir(storage: str) -> int:
    """Remove the stale temp files of ``storage``; return how many went."""
    removed = 0
    try:
        entries = list(os.scandir(temp_dir(storage)))
    except OSError:
        return 0
    now = time.time()
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and is_stale_temp(entry.path, now):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                continue
    return removed
