"""The local storage pairs: find files, choose a pair, check health, sweep temp dirs.

:class:`LocalStore` is the only object that touches the storage directories.
Its public methods return Deferreds and run every blocking call (``stat``,
``open``, ``statvfs``, directory walks) in a thread pool, so the reactor thread
never waits on a disk.  The blocking helpers are plain functions, tested directly.
"""

import errno
import os
import random
import re
import secrets
import stat
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import IO, TypeVar

from twisted.internet.defer import Deferred

from twisted.internet.defer import succeed

from stor.core import layout
from stor.fs import nowait
from stor.core import placement
from stor.fs.diskpool import DiskPool
from stor.core.placement import Pair

T = TypeVar("T")

TEMP_DIR = ".stor-tmp"
"""Per-storage directory for files being written; on the storage's filesystem so rename is atomic."""

SMALL_FILE = 64 * 1024
"""Files up to this size are read whole in the lookup's thread call: one hop per GET."""


@dataclass(frozen=True)
class Hit:
    """A file found on a storage, opened for reading.

    ``data`` holds the whole content of a small file (and ``file`` is None);
    a larger file is handed over open, to be streamed by a producer.
    """

    storage: str
    path: str
    size: int
    mtime: float
    attempt: int
    data: bytes | None = None
    file: IO[bytes] | None = None

    def close(self) -> None:
        """Release the open file, when the body will not be sent after all."""
        if self.file is not None:
            self.file.close()


def temp_dir(storage: str) -> str:
    """The temp directory of ``storage``."""
    return os.path.join(storage, TEMP_DIR)


def temp_name(sha: str) -> str:
    """A fresh temp file name: ``<sha>.<pid>.<random>.tmp`` (the sweeper reads the pid)."""
    return f"{sha}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def free_bytes(storage: str) -> int:
    """Bytes available to stor on ``storage``'s filesystem; 0 when it cannot be read."""
    try:
        st = os.statvfs(storage)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def open_first(order: Sequence[str], sha: str) -> Hit | None:
    """Open ``sha``'s file on the first storage in ``order`` that has it."""
    rel = layout.relative_path(sha)
    for attempt, storage in enumerate(order, start=1):
        path = os.path.join(storage, rel)
        try:
            f = open(path, "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            continue  # an unreadable disk is a miss there, not a failed request
        try:
            st = os.fstat(f.fileno())
            if st.st_size <= SMALL_FILE:
                data = f.read(st.st_size + 1)
                f.close()
                return Hit(storage, path, len(data), st.st_mtime, attempt, data=data)
            return Hit(storage, path, st.st_size, st.st_mtime, attempt, file=f)
        except OSError:
            f.close()
            continue
    return None


class _Blocked:
    """Marker: answering without a thread could wait for a disk."""


BLOCKED = _Blocked()


def open_now(order: Sequence[str], sha: str, head: bool = False) -> "Hit | None | _Blocked":
    """:func:`open_first` (or :func:`stat_first` for ``head``) using only cached
    data: the answer, or :data:`BLOCKED` as soon as anything would need a disk."""
    rel = layout.relative_path(sha)
    for attempt, storage in enumerate(order, start=1):
        path = os.path.join(storage, rel)
        try:
            fd = nowait.open_cached(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return BLOCKED  # let the thread path decide what an odd error means
        if fd is None:
            return BLOCKED
        hit = _hit_now(fd, storage, path, attempt, head)
        if hit is not None:
            return hit
    return None


def _hit_now(fd: int, storage: str, path: str, attempt: int, head: bool) -> "Hit | _Blocked | None":
    """The Hit for an fd opened by :func:`open_now`, which owns (and may close) it."""
    keep = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if head:
            return Hit(storage, path, st.st_size, st.st_mtime, attempt)
        if st.st_size > SMALL_FILE:
            keep = True
            return Hit(storage, path, st.st_size, st.st_mtime, attempt,
                       file=os.fdopen(fd, "rb", buffering=0))
        data = nowait.read_cached(fd, st.st_size)
        if data is None:
            return BLOCKED
        return Hit(storage, path, st.st_size, st.st_mtime, attempt, data=data)
    except OSError:
        return BLOCKED
    finally:
        if not keep:
            os.close(fd)


def stat_first(order: Sequence[str], sha: str) -> Hit | None:
    """Like :func:`open_first` without opening: for HEAD."""
    rel = layout.relative_path(sha)
    for attempt, storage in enumerate(order, start=1):
        path = os.path.join(storage, rel)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if os.path.isfile(path):
            return Hit(storage, path, st.st_size, st.st_mtime, attempt)
    return None


def find_all(order: Sequence[str], sha: str) -> list[str]:
    """Every path of ``sha`` on the storages, in ``order``."""
    rel = layout.relative_path(sha)
    return [p for p in (os.path.join(s, rel) for s in order) if os.path.isfile(p)]


def storage_problem(storage: str, check_mounts: bool, root_dev: int) -> str | None:
    """Why ``storage`` cannot serve, or None when it is healthy."""
    try:
        st = os.stat(storage)
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if not os.path.isdir(storage):
        return "is not a directory"
    if check_mounts and st.st_dev == root_dev:
        return "is on the / filesystem (not a mounted disk)"
    return None


def sweep_temp_dir(storage: str, older_than: float) -> int:
    """Remove stale temp files of ``storage``; return how many went.

    A temp file is stale when the process that wrote it is gone (its pid is in
    the name) or it has not been written for ``older_than`` seconds.  An upload
    in flight writes continuously (an idle connection is timed out long before),
    so its file is never stale; other stor processes' files are left alone.
    """
    removed = 0
    now = time.time()
    try:
        entries = list(os.scandir(temp_dir(storage)))
    except OSError:
        return 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and is_stale_temp(entry, now, older_than):
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                continue
    return removed


def is_stale_temp(entry: os.DirEntry[str], now: float, older_than: float) -> bool:
    """The staleness rule of :func:`sweep_temp_dir` (``stor scrub`` applies it too)."""
    try:
        idle = now - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False  # gone meanwhile: its upload finished
    return not _owner_alive(entry.name) or idle > older_than


def _owner_alive(name: str) -> bool:
    """Whether the pid embedded in a temp file name (``<sha>.<pid>.<rand>.tmp``) runs."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LocalStore:
    """The configured storage pairs, used only through Deferred-returning methods."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        pool: DiskPool,
        writable_regex: re.Pattern[str] = re.compile(".*"),
        balance_threshold: int = placement.BALANCE_THRESHOLD,
        check_mounts: bool = True,
        rng: random.Random | None = None,
        free: Callable[[str], int] = free_bytes,
    ) -> None:
        self.pairs = tuple(pairs)
        self.storages = tuple(s for pair in self.pairs for s in pair)
        self._pool = pool
        self._writable = writable_regex
        self._threshold = balance_threshold
        self._check_mounts = check_mounts
        self._rng = rng or random.Random()
        self._free = free

    def run(self, f: Callable[..., T], *args: object) -> "Deferred[T]":
        """Run blocking ``f(*args)`` in the disk thread pool."""
        return self._pool.run(f, *args)

    def lookup_order(self) -> list[str]:
        """A fresh lookup order (SPEC §2), drawn on the reactor thread."""
        return placement.lookup_order(self.pairs, self._rng)

    def open(self, sha: str) -> "Deferred[Hit | None]":
        """Find and open ``sha`` for a GET: on the reactor when the kernel can
        answer from its caches, else in the disk pool."""
        order = self.lookup_order()
        hit = open_now(order, sha)
        if isinstance(hit, _Blocked):
            return self.run(open_first, order, sha)
        return succeed(hit)

    def open_path(self, path: str, sha: str, head: bool = False) -> "Deferred[Hit | None]":
        """Open ``sha`` at a path remembered from an earlier lookup (the cache's answer)."""
        rel = layout.relative_path(sha)
        if not path.endswith(os.sep + rel):
            return succeed(None)
        order = [path[: -len(rel) - 1]]
        hit = open_now(order, sha, head)
        if isinstance(hit, _Blocked):
            return self.run(stat_first if head else open_first, order, sha)
        return succeed(hit)

    def stat(self, sha: str) -> "Deferred[Hit | None]":
        """Find ``sha`` for a HEAD, the same way."""
        order = self.lookup_order()
        hit = open_now(order, sha, head=True)
        if isinstance(hit, _Blocked):
            return self.run(stat_first, order, sha)
        return succeed(hit)

    def find_all(self, sha: str) -> "Deferred[list[str]]":
        """Every stored copy of ``sha``: the duplicate check of a POST."""
        return self.run(find_all, self.lookup_order(), sha)

    def choose_pair(self, size: int, exclude: Collection[Pair] = ()) -> Pair:
        """Blocking: the pair a new file of ``size`` bytes goes to (statvfs each storage)."""
        candidates = [
            (pair, (self._writable_free(pair[0]), self._writable_free(pair[1])))
            for pair in self.pairs
            if pair not in exclude
        ]
        return placement.choose_pair(candidates, size, self._rng, self._threshold)

    def _writable_free(self, storage: str) -> int:
        if not placement.writable(storage, self._writable):
            return 0
        return self._free(storage)

    def problems(self) -> "Deferred[list[tuple[str, str]]]":
        """(storage, reason) for every storage that cannot serve: ``/status``."""
        def check() -> list[tuple[str, str]]:
            root_dev = os.stat("/").st_dev
            found = ((s, storage_problem(s, self._check_mounts, root_dev)) for s in self.storages)
            return [(s, why) for s, why in found if why]
        return self.run(check)

    def sweep(self, older_than: float) -> "Deferred[int]":
        """Remove stale temp files on every storage."""
        def sweep_all() -> int:
            return sum(sweep_temp_dir(s, older_than) for s in self.storages)
        return self.run(sweep_all)


def is_no_space(error: OSError) -> bool:
    """Whether ``error`` means the filesystem is full (or over quota)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
