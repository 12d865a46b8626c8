"""One owner per SHA on a host: an exclusive ``flock`` shared by every process.

Every writer of a final path — an upload's commit, repair, a fill from S3,
``stor scrub --repair``, DELETE, quarantine — holds the SHA's lock while it
checks what is in place and changes it, so that none of them acts on a state
another has just changed (an upload reporting a file a failing commit is
about to remove; a repair bringing back a file being deleted).  Uploads of one
SHA may go to different pairs, so the lock is per host, not per storage.

The locks are files in one directory (``lock_dir``), one per three-hex-digit
prefix of the SHA: at most 4096 files, created on first use and never removed
(removing lock files races with their users), so two SHAs sharing a prefix
share a lock.
That only serialises their commits, which hold it for a rename and a few
fsyncs.  ``flock`` belongs to the open file, so threads of one process and
other processes exclude each other alike, and a process that dies releases
its locks.  Everything here blocks: call it from the disk pool.
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

class ShaLocks:
    """The host's per-SHA locks in ``directory`` (created with its lock files)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._ready = False

    def prepare(self) -> None:
        """Create the directory (blocking; at start, or on first use).

        The directory is sticky and writable by anyone, like ``/tmp``, and the
        lock files by anyone (they hold nothing), so a daemon running as
        ``stor`` and an operator's ``stor scrub`` as root share them whichever
        came first.
        """
        if not os.path.isdir(self.directory):
            os.makedirs(self.directory, exist_ok=True)
            try:
                os.chmod(self.directory, 0o1777)
            except PermissionError:
                pass  # made by someone else meanwhile
        self._ready = True

    @contextmanager
    def hold(self, sha: str) -> Iterator[None]:
        """Hold ``sha``'s lock for the ``with`` block (waits for the current holder)."""
        if not self._ready:
            self.prepare()
        fd = self._open(os.path.join(self.directory, sha[:3].lower() + ".lock"))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def _open(path: str) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        if os.fstat(fd).st_mode & 0o666 != 0o666:
            try:
                os.fchmod(fd, 0o666)  # not narrowed by the umask
            except PermissionError:
                pass  # another user's file, already opened up by its creator
        return fd


def default_lock_dir() -> str:
    """Where the locks live when ``lock_dir`` is not configured.

    Under systemd, ``RuntimeDirectory=stor`` gives ``/run/stor``; an operator
    running ``stor scrub`` as root finds the same directory.  Without it,
    ``/run/stor`` when this process may create it, else a directory of this
    user's below the system temp dir.
    """
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "locks")
    if os.access("/run", os.W_OK) or os.path.isdir("/run/stor"):
        return "/run/stor/locks"
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"stor-{os.getuid()}", "locks")


class Tombstones:
    """When each SHA was last deleted on this host, shared by every process.

    A DELETE leaves ``<lock_dir>/deleted/<sha>`` (under the SHA's lock) so
    that work begun before it — an upload still receiving its body, a fill
    from S3 — does not bring the file back when it commits after it: those
    check, under the same lock, whether the SHA was deleted since they began.
    Repairs and scrubs need no tombstone: their source is gone.  Old
    tombstones are swept (:meth:`sweep`); only recent ones can matter.
    """

    def __init__(self, locks: ShaLocks) -> None:
        self.directory = os.path.join(locks.directory, "deleted")

    def bury(self, sha: str) -> None:
        """Record that ``sha`` is deleted now (blocking; hold its lock)."""
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, sha.lower())
        with open(path, "w"):
            pass
        now = time.time_ns()  # the fine clock: a file's own mtime ticks only every few ms
        os.utime(path, ns=(now, now))

    def deleted_since(self, sha: str, since: float) -> bool:
        """Whether ``sha`` was deleted at or after ``since`` (a ``time.time()``)."""
        try:
            return os.stat(os.path.join(self.directory, sha.lower())).st_mtime >= since
        except FileNotFoundError:
            return False

    def sweep(self, older_than: float) -> int:
        """Remove tombstones older than ``older_than`` seconds; how many went."""
        removed = 0
        limit = time.time() - older_than
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < limit:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
