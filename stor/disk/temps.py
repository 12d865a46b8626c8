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
import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stor.core import layout
from stor.disk.anchored import open_chain, open_file_at
from stor.disk.fsio import made_chain

ORPHAN_AGE = 10.0
"""Seconds an unowned temp file must have been idle before it is removed
(covers the moment between its creation and its writer taking the lock)."""


def temp_dir(storage: str) -> str:
    """The temp directory of ``storage``."""
    return os.path.join(storage, layout.TEMP_DIR)


_names = itertools.count()
_start = [0, 0]  # the pid it was drawn for, and a random start drawn once per process


def temp_name(sha: str) -> str:
    """A fresh temp file name: ``<sha>.<pid>.<random>.tmp``, 8 hex digits of random.

    They count on from a random start drawn once per process (and again in a
    forked worker): unique in the process, unlikely to meet a dead process's
    stale temp of the same pid (``O_EXCL`` would refuse it), and no
    ``getrandom`` call per temp -- each system call of a small upload's batch
    thread is a hand-off of the GIL when the reactor wants it."""
    pid = os.getpid()
    if _start[0] != pid:
        _start[:] = [pid, secrets.randbits(32)]
    return f"{sha}.{pid}.{(_start[1] + next(_names)) & 0xFFFFFFFF:08x}.tmp"


@dataclass
class OwnedTemp:
    """An open, locked temp file; ``close`` releases it (rename or remove it first).

    ``dir_fd`` is its temp directory, reached without following links
    (:mod:`stor.disk.anchored`): it is renamed and removed through it.
    """

    storage: str
    path: str
    fd: int
    dir_fd: int = -1
    _dev: int | None = field(default=None, init=False, repr=False)

    @property
    def dev(self) -> int:
        """The device of its filesystem (``fstat`` once: a temp never moves to another)."""
        if self._dev is None:
            self._dev = os.fstat(self.fd).st_dev
        return self._dev

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def close(self) -> None:
        for fd in (self.fd, self.dir_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = self.dir_fd = -1

    def discard(self) -> None:
        """Remove the file and release it; safe to call more than once."""
        if self.fd >= 0:
            try:
                if self.dir_fd >= 0:
                    os.unlink(self.name, dir_fd=self.dir_fd)
                else:
                    os.unlink(self.path)
            except OSError:
                pass  # cleanup must not hide the error being handled
        self.close()


def create_temp(storage: str, sha: str, owner: tuple[int, int] | None = None) -> OwnedTemp:
    """Create and lock a new temp file for ``sha`` on ``storage`` (blocking).

    The temp directory is created when missing, never the storage itself.
    """
    directory = temp_dir(storage)
    with made_chain(storage, directory, owner) as chain:
        dir_fd = chain.take_leaf()
    name = temp_name(sha)
    path = os.path.join(directory, name)
    try:
        fd = open_file_at(dir_fd, name, os.O_RDWR | os.O_CREAT | os.O_EXCL, path)
    except BaseException:
        os.close(dir_fd)
        raise
    temp = OwnedTemp(storage, path, fd, dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        temp.discard()
        raise
    return temp


def is_stale_temp(path: str, now: float | None = None, dir_fd: int | None = None) -> bool:
    """Whether nobody owns the temp file at ``path`` and it has been idle a while.

    With ``dir_fd``, ``path`` is a name in that directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)
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
    """Remove the stale temp files of ``storage``; return how many went.

    The directory is reached and listed through a descriptor: a ``.stor-tmp``
    replaced by a symlink is not swept (its target's files are not ours)."""
    try:
        chain = open_chain(storage, temp_dir(storage))
    except OSError:
        return 0
    with chain:
        return len(sweep_stale(chain.leaf, lambda name: None))


def sweep_stale(dir_fd: int, on_stale: Callable[[str], None], remove: bool = True,
                now: float | None = None) -> list[str]:
    """The stale temp files in the temp directory ``dir_fd`` (removed with ``remove``).

    ``on_stale(name)`` is told of each before it is removed."""
    try:
        with os.scandir(dir_fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return []
    now = time.time() if now is None else now
    stale: list[str] = []
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and is_stale_temp(entry.name, now, dir_fd):
            on_stale(entry.name)
            if remove:
                try:
                    os.unlink(entry.name, dir_fd=dir_fd)
                except OSError:
                    continue
            stale.append(entry.name)
    return stale
