"""Group commit: one ``syncfs`` shared by every upload waiting on the same filesystem.

A durable small upload is mostly waiting for the disk: its file's data, the
``AA/BB/CC`` entries and the ``.dat`` entry each need a flush, and on ext4
each ``fsync`` is a journal commit and a disk cache flush of its own.  Uploads
that run at the same time can share them: ``syncfs(fd)`` makes *everything*
changed on ``fd``'s filesystem before the call began durable (data, sizes,
entries) in one journal commit.

:class:`GroupSync` hands out those calls.  :meth:`GroupSync.sync` returns
once a ``syncfs`` of the filesystem that **began after** the call was made has
completed: the caller's own changes, all made before it asked, are then
durable (the conservative model of ``tests/support/crashcheck.py``).  When no
``syncfs`` is running the caller issues one itself; while one runs, every
caller that arrives waits for the next, which the first of them issues for
all: N callers arriving during one flush share the next one.  A caller is
usually a whole batch of small uploads (:mod:`stor.disk.batch`), so one round
covers every upload of the batch, and the batch thread and a lone upload
stored by the pool share rounds with each other.

Durability is not traded for speed: each caller waits for its own flush,
which is a flush of everything it wrote.  What is shared is the cost.  A
failed ``syncfs`` (the kernel reports a writeback error of the filesystem,
Linux >= 5.8) fails every caller of that round, which then makes its own
files durable file by file or gives up (:mod:`stor.disk.small`).

Only where ``syncfs`` is known to keep that promise (:meth:`GroupSync.covers`):
a filesystem of :data:`SYNCFS_FILESYSTEMS` on Linux >= 5.8, where it flushes
data, entries and the device's cache and reports writeback errors.  Elsewhere
(FUSE, NFS and other network filesystems, an older kernel that drops the
error) the upload takes the file-by-file ``fsync`` path.

On a host with one disk per storage a pair's two files are on two filesystems
and need two rounds (run side by side by :meth:`GroupSync.sync_all`); in the
bench and tests every storage is on one filesystem, so one round covers both.
Blocking: call it from the disk pool.
"""

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stor.disk.fsio import syncfs, syncfs_available

SYNCFS_FILESYSTEMS = frozenset({"ext4", "ext3", "xfs", "btrfs", "f2fs", "tmpfs"})
"""Local filesystems whose ``syncfs`` writes back every inode, commits the journal and
flushes the device cache (tmpfs: nothing to flush, as for ``fsync``)."""


def _kernel_reports_errors(release: str) -> bool:
    """Whether a kernel ``release`` makes ``syncfs`` report writeback errors (>= 5.8)."""
    found = re.match(r"(\d+)\.(\d+)", release)
    return found is not None and (int(found[1]), int(found[2])) >= (5, 8)


def filesystem_type(dev: int, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the filesystem mounted as device ``dev`` (None if not found)."""
    wanted = f"{os.major(dev)}:{os.minor(dev)}"
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == wanted and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        pass
    return None


@dataclass
class _Filesystem:
    started: int = 0
    """Rounds begun (the one running included)."""
    finished: int = 0
    """Rounds completed."""
    running: bool = False
    errors: dict[int, OSError] = field(default_factory=dict)
    """Rounds that failed, by number (only the latest few are kept)."""


class GroupSync:
    """Shares ``syncfs`` calls between the threads that ask at the same time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._filesystems: dict[int, _Filesystem] = {}
        self.rounds = 0
        """``syncfs`` calls made (for the bench and the tests)."""
        self.requests = 0
        """:meth:`sync` calls served."""
        self._covered: dict[int, bool] = {}

    def covers(self, fd: int, dev: int | None = None) -> bool:
        """Whether a ``syncfs`` of ``fd``'s filesystem (device ``dev``, when the caller
        knows it) makes its changes durable and says when it could not (see the module
        docstring); cached per filesystem."""
        dev = os.fstat(fd).st_dev if dev is None else dev
        known = self._covered.get(dev)
        if known is None:
            known = (syncfs_available() and _kernel_reports_errors(os.uname().release)
                     and filesystem_type(dev) in SYNCFS_FILESYSTEMS)
            self._covered[dev] = known
        return known

    def sync(self, fd: int, dev: int) -> None:
        """Return once a ``syncfs`` of filesystem ``dev`` begun after this call has
        completed; ``fd`` is open on that filesystem (used if this thread issues it).

        Raises the ``OSError`` of that round when it failed.
        """
        with self._cond:
            fs = self._filesystems.setdefault(dev, _Filesystem())
            target = fs.started + 1
            self.requests += 1
            while fs.finished < target:
                if fs.running:
                    self._cond.wait()
                    continue
                fs.started += 1
                fs.running = True
                number = fs.started
                self._cond.release()
                error: OSError | None = None
                try:
                    syncfs(fd)
                except OSError as e:
                    error = e
                finally:
                    self._cond.acquire()
                    fs.running = False
                    fs.finished = number
                    self.rounds += 1
                    if error is not None:
                        fs.errors[number] = error
                        for old in [n for n in fs.errors if n < number - 64]:
                            del fs.errors[old]
                    self._cond.notify_all()
            failed = fs.errors.get(target)
        if failed is not None:
            raise OSError(failed.errno, failed.strerror)

    def sync_all(self, fds: Sequence[int],
                 devs: Sequence[int] | None = None) -> list[OSError | None]:
        """:meth:`sync` for each filesystem of ``fds`` (one round per filesystem, run side
        by side when there are several); per fd, None or the error of its round.
        ``devs``: each fd's device, when the caller knows them."""
        of_fd = list(devs) if devs is not None else [os.fstat(fd).st_dev for fd in fds]
        fd_on: dict[int, int] = {}  # each filesystem, and the first fd on it
        for fd, dev in zip(fds, of_fd):
            fd_on.setdefault(dev, fd)
        if len(fd_on) == 1:
            results = [self._try(fd, dev) for dev, fd in fd_on.items()]
        else:
            with ThreadPoolExecutor(len(fd_on)) as pool:
                results = list(pool.map(lambda item: self._try(item[1], item[0]),
                                        fd_on.items()))
        outcome = dict(zip(fd_on, results))
        return [outcome[dev] for dev in of_fd]

    def _try(self, fd: int, dev: int) -> OSError | None:
        try:
            self.sync(fd, dev)
        except OSError as e:
            return e
        return None


GROUP_SYNC = GroupSync()
"""The process's one group (every upload of the process shares it)."""
