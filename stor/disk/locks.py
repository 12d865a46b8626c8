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

The directory is the host's shared state, so it is trusted only when it
belongs to the service's user (docs/security.rst): it is never world-writable
(any local user could otherwise plant a 0600 lock file, hold a ``flock``
forever, or forge a tombstone), it is refused at start when its owner or mode
is wrong, and every file in it is opened through the directory's descriptor
with ``O_NOFOLLOW`` — no symlink is followed and no existing file's mode is
changed.  Operators' tools share it by running as that user (``stor scrub``
drops to it) or, as members of its group, through the group's permissions:
``flock`` needs only a read-only descriptor.
"""

import errno
import fcntl
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from stor.core.errors import Busy, ConfigError

T = TypeVar("T")

DIR_MODE = 0o770
"""The lock directory's mode when stor creates it: its user and group only."""
FILE_MODE = 0o640
"""Lock files and tombstones: the group (operators) may open them to ``flock``."""
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Owner = tuple[int, int]
"""(uid, gid) the service runs as."""


def _refuse(directory: str, why: str) -> ConfigError:
    return ConfigError("lock_dir", f"{directory} {why}; it must be a directory of the user stor "
                       "runs as (mode 0770 or narrower; systemd's RuntimeDirectory= makes one)")


def _make_dir(path: str, owner: Owner | None) -> None:
    """Create ``path`` (its parents 0755) for ``owner``; an existing one is left as it is."""
    parent = os.path.dirname(path.rstrip("/"))
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755, exist_ok=True)
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    fd = os.open(path, _DIR_FLAGS)  # ours, just made: give it the mode the umask narrowed
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return  # replaced meanwhile: the check that follows judges it
        os.fchmod(fd, DIR_MODE)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)  # made by root for the user twistd switches to
    finally:
        os.close(fd)


def open_trusted_dir(path: str, owner: Owner | None = None) -> int:
    """A descriptor of directory ``path`` after checking it may hold the host's locks.

    Created (mode 0770, for ``owner`` when root) when missing.  Refused with a
    :class:`ConfigError` naming ``lock_dir`` when it is a symlink, not a
    directory, writable by others, or belongs to neither the user stor runs as
    (``owner`` or the effective uid) nor, group-writable, to one of its groups.
    """
    try:
        _make_dir(path, owner)
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise _refuse(path, "is a symbolic link or not a directory") from None
        raise _refuse(path, f"cannot be created or opened: {e.strerror}") from None
    problem = _distrust(os.fstat(fd), owner)
    if problem is not None:
        os.close(fd)
        raise _refuse(path, problem)
    return fd


def _distrust(st: os.stat_result, owner: Owner | None) -> str | None:
    """Why a directory with ``st`` cannot be trusted with the locks (None: it can)."""
    uid = owner[0] if owner is not None else os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o002:
        return f"is writable by every user (mode {mode:04o})"
    if st.st_uid == uid:
        return None
    groups = {owner[1]} if owner is not None else {os.getegid(), *os.getgroups()}
    if st.st_gid in groups and mode & 0o070 == 0o070:
        return None  # an operator in the service's group
    return f"belongs to uid {st.st_uid}, not to uid {uid} (the user stor runs as)"


LOCK_WAIT = 10.0
"""Seconds a writer waits for a SHA's lock before answering 503 (a commit holds it for a
rename and a few fsyncs; a holder past this is stuck or hostile)."""
FIRST_PAUSE, LONGEST_PAUSE = 0.001, 0.05


def _prefix(sha: str) -> str:
    return sha[:3].lower()


class LockBusy(Busy):
    """A SHA's lock stayed held longer than the bounded wait."""

    def __init__(self, sha: str, waited: float) -> None:
        super().__init__(f"the lock of {sha[:3].lower()}* stayed held for {waited:g} s")


class ShaLocks:
    """The host's per-SHA locks in ``directory`` (checked and opened by :meth:`prepare`)."""

    def __init__(self, directory: str, owner: Owner | None = None,
                 wait: float = LOCK_WAIT) -> None:
        self.directory = directory
        self.owner = owner
        self.wait = wait
        self._fd: int | None = None
        self._deleted_fd: int | None = None
        self._thread = threading.local()  # the prefixes a job of this thread holds

    def prepare(self) -> None:
        """Create or check the directory and open it (blocking; at start, or on first use).

        Raises :class:`ConfigError` (key ``lock_dir``) when it, or its tombstones'
        ``deleted/``, cannot be trusted: at start, not at the first DELETE.
        """
        if self._fd is None:
            self._fd = open_trusted_dir(self.directory, self.owner)
        if self._deleted_fd is None:
            self._deleted_fd = open_trusted_dir(os.path.join(self.directory, "deleted"),
                                                self.owner)

    @property
    def deleted_fd(self) -> int:
        """The descriptor of the tombstones' directory (prepared on first use)."""
        if self._deleted_fd is None:
            self.prepare()
        assert self._deleted_fd is not None
        return self._deleted_fd

    @property
    def fd(self) -> int:
        """The directory's descriptor (prepared on first use)."""
        if self._fd is None:
            self.prepare()
        assert self._fd is not None
        return self._fd

    @contextmanager
    def hold(self, sha: str) -> Iterator[None]:
        """Hold ``sha``'s lock for the ``with`` block.

        Reentrant on one thread: inside another ``hold`` of the same prefix, or
        a job started already holding it (:meth:`run_held_blocking`, from
        :mod:`stor.disk.lockwait`), this is that lock.  Otherwise it waits for the current holder at most
        :attr:`wait` seconds, then raises :class:`LockBusy` (503): the waiting
        thread is the caller's (a command's, a background repair's).
        """
        prefix = _prefix(sha)
        held = self._held_here()
        if prefix in held:
            yield  # this thread holds it already (reentrant)
            return
        fd = self._open(prefix + ".lock")
        try:
            self._acquire(fd, sha)
            held.add(prefix)
            yield
        finally:
            held.discard(prefix)
            os.close(fd)  # releases the lock

    @contextmanager
    def hold_free(self, shas: Sequence[str]) -> Iterator[set[str]]:
        """Hold, for the ``with`` block, the lock of every one of ``shas`` that is free
        now (one ``LOCK_NB`` try each, never a wait); yields the SHAs held.

        For a batch run by one thread (:mod:`stor.disk.batch`): SHAs sharing a
        prefix share its lock, which this thread then holds once; a SHA whose
        lock another holder has is left out, for the caller to wait for elsewhere.
        """
        held = self._held_here()
        taken: dict[str, int] = {}
        refused: set[str] = set()
        free: set[str] = set()
        try:
            for sha in shas:
                prefix = _prefix(sha)
                if prefix in refused:
                    continue
                if prefix not in held:
                    fd, got = self.try_lock_blocking(sha)
                    if not got:
                        os.close(fd)
                        refused.add(prefix)
                        continue
                    taken[prefix] = fd
                    held.add(prefix)
                free.add(sha)
            yield free
        finally:
            for prefix, fd in taken.items():
                held.discard(prefix)
                os.close(fd)  # releases the lock

    def _held_here(self) -> set[str]:
        held: set[str] | None = getattr(self._thread, "held", None)
        if held is None:
            held = self._thread.held = set()
        return held

    def try_lock_blocking(self, sha: str, fd: int | None = None) -> tuple[int, bool]:
        """One try (``LOCK_NB``) at ``sha``'s lock: (the lock file's fd, whether it is held).

        Opens the lock file when ``fd`` is None; the caller keeps the fd for
        the next try and closes it (which releases the lock)."""
        if fd is None:
            fd = self._open(_prefix(sha) + ".lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return fd, False
        except BaseException:
            os.close(fd)
            raise
        return fd, True

    def run_held_blocking(self, sha: str, fd: int, f: Callable[..., T], *args: object) -> T:
        """``f(*args)`` with ``sha``'s lock, already taken on ``fd``; released (closed) after.

        :meth:`hold` of the same prefix inside ``f`` is this lock."""
        held = self._held_here()
        prefix = _prefix(sha)
        held.add(prefix)
        try:
            return f(*args)
        finally:
            held.discard(prefix)
            os.close(fd)

    def _acquire(self, fd: int, sha: str) -> None:
        """``flock`` without blocking, retried with a growing pause until :attr:`wait`."""
        deadline = time.monotonic() + self.wait
        pause = FIRST_PAUSE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockBusy(sha, self.wait)
            time.sleep(min(pause, left))
            pause = min(pause * 2, LONGEST_PAUSE)

    def _open(self, name: str) -> int:
        """The lock file ``name``, created when missing, never through a symlink."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        while True:
            try:
                return os.open(name, flags, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            try:
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, FILE_MODE, dir_fd=self.fd)
            except FileExistsError:
                continue  # another process made it meanwhile
            self._give_away(fd)
            return fd

    def _give_away(self, fd: int) -> None:
        """A file root made in the service's directory is the service's (else its
        0640 would lock the daemon out of it)."""
        if self.owner is not None and os.geteuid() == 0:
            os.fchown(fd, *self.owner)


def service_owner(directory: str) -> Owner | None:
    """For a root tool that stays root: the (uid, gid) owning an existing lock directory
    when that is another user's (the service's), so its lock files are made the
    service's and the directory is checked against it; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.lstat(directory)
    except OSError:
        return None
    if st.st_uid == 0 or not stat.S_ISDIR(st.st_mode):
        return None
    return st.st_uid, st.st_gid


def default_lock_dir() -> str:
    """Where the locks live when ``lock_dir`` is not configured.

    Under systemd, ``RuntimeDirectory=stor`` gives ``/run/stor`` (owned by the
    unit's user); an operator running ``stor scrub`` finds the same directory.
    Otherwise ``/run/stor/locks``, created at start when stor may; never a
    fallback below a directory anyone can write (``/tmp``), which another user
    could create first.
    """
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        return os.path.join(runtime, "locks")
    return "/run/stor/locks"


class Tombstones:
    """When each SHA was last deleted on this host, shared by every process.

    A DELETE leaves ``<lock_dir>/deleted/<sha>`` (under the SHA's lock) so
    that work begun before it — an upload still receiving its body, a fill
    from S3 — does not bring the file back when it commits after it: those
    check, under the same lock, whether the SHA was deleted since they began.
    Repairs and scrubs need no tombstone: their source is gone.  Old
    tombstones are swept (:meth:`sweep`); only recent ones can matter.  The
    directory is checked like the lock directory: a ``deleted/`` or a
    tombstone planted by another user is never trusted.
    """

    def __init__(self, locks: ShaLocks) -> None:
        self._locks = locks
        self.directory = os.path.join(locks.directory, "deleted")

    @property
    def fd(self) -> int:
        return self._locks.deleted_fd

    def bury(self, sha: str) -> None:
        """Record that ``sha`` is deleted now (blocking; hold its lock).

        The tombstone is made anew (unlink, then ``O_EXCL``), so that its
        mtime is set on a file of this process's own, whoever made the last.
        """
        name = sha.lower()
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     FILE_MODE, dir_fd=self.fd)
        try:
            self._locks._give_away(fd)
            now = time.time_ns()  # the fine clock: a file's own mtime ticks only every few ms
            os.utime(fd, ns=(now, now))
        finally:
            os.close(fd)

    def deleted_since(self, sha: str, since: float) -> bool:
        """Whether ``sha`` was deleted at or after ``since`` (a ``time.time()``)."""
        try:
            st = os.stat(sha.lower(), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISREG(st.st_mode) and st.st_mtime >= since

    def sweep(self, older_than: float) -> int:
        """Remove tombstones older than ``older_than`` seconds; how many went."""
        removed = 0
        limit = time.time() - older_than
        with os.scandir(self.fd) as it:
            entries = list(it)
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(entry.name, dir_fd=self.fd)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
