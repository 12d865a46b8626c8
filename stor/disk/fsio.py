"""Small blocking file-system helpers shared by uploads, repair, fill and scrub.

Everything here blocks: call it from the disk pool, never the reactor.
"""

import ctypes
import errno
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from stor.disk.anchored import DirChain, open_chain

_FALLOC_FL_KEEP_SIZE = 0x01


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_chunks(fd: int, chunks: Sequence[bytes]) -> None:
    """Write every byte of ``chunks``, in order, with as few system calls as possible."""
    if len(chunks) == 1:
        write_all(fd, chunks[0])
        return
    pending = [memoryview(c) for c in chunks if c]
    while pending:
        n = os.writev(fd, pending[:1024])  # IOV_MAX
        while n and pending:
            if n >= len(pending[0]):
                n -= len(pending.pop(0))
            else:
                pending[0] = pending[0][n:]
                n = 0


def fsync_dir(path: str) -> None:
    """Make a rename into (or a creation in) directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there; cleanup must not hide the error being handled."""
    try:
        os.unlink(path)
    except OSError:
        pass


def make_dirs(storage: str, path: str, owner: tuple[int, int] | None = None) -> list[str]:
    """Create the missing directories from ``storage`` down to ``path``, durably.

    See :func:`made_chain`; returns the directories created, top first.
    """
    with made_chain(storage, path, owner) as chain:
        return chain.created


def made_chain(storage: str, path: str, owner: tuple[int, int] | None = None) -> DirChain:
    """Descriptors down to ``path``, the missing directories created durably.

    ``storage`` itself is never created (an unmounted disk must not fill the
    root filesystem) and no symlink on the way is followed
    (:mod:`stor.disk.anchored`).  The parent of every directory created is
    fsynced, up to the storage root, so that after a power cut the new
    entries are there: a file renamed into a new directory would otherwise be
    lost with its directory.  The caller fsyncs ``path`` itself (``chain.leaf``)
    after putting something in it.  Run as root, new directories get
    ``owner`` (the storage's), so the daemon running as another user can still
    write next to them.  The caller closes the chain.
    """
    if not os.path.isdir(storage):
        raise FileNotFoundError(errno.ENOENT, "storage is not a directory", storage)
    chain = open_chain(storage, path, create=True, owner=owner)
    try:
        fds = dict(zip(chain.paths, chain.fds))
        for parent in dict.fromkeys(os.path.dirname(d) for d in chain.created):
            os.fsync(fds[parent])  # the new entry; the leaf is fsynced by whoever fills it
    except BaseException:
        chain.close()
        raise
    return chain


class _KnownDurable:
    """Entries this process has seen made durable: path -> (st_dev, st_ino).

    An entry is durable once its parent directory was fsynced *after* the entry
    existed.  Whoever created a directory may not have done that yet (another
    upload, another worker, a process that died), so an entry found already
    there is not taken as durable until this process fsynced its parent once.
    Keyed by inode, so an entry removed and made again is fsynced again.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def has(self, path: str, ident: tuple[int, ...]) -> bool:
        with self._lock:
            return self._known.get(path) == ident

    def add(self, path: str, ident: tuple[int, ...]) -> None:
        with self._lock:
            if len(self._known) > 200_000:  # bounded: forgetting only costs an fsync
                self._known.clear()
            self._known[path] = ident


KNOWN_DURABLE = _KnownDurable()
KNOWN_SYNCED = _KnownDurable()
"""Files whose data this process fsynced, keyed by path and their full stamp
(:func:`stor.disk.verified.stamp_of`): a write since changes the ctime."""


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def durable_dirs(storage: str, path: str, owner: tuple[int, int] | None = None) -> list[str]:
    """Make every directory from ``storage`` down to ``path`` exist *and be durable*.

    See :func:`durable_chain`; returns the directories created.
    """
    with durable_chain(storage, path, owner) as chain:
        return chain.created


def durable_chain(storage: str, path: str, owner: tuple[int, int] | None = None) -> DirChain:
    """Descriptors down to ``path``, every directory on the way there and durable.

    Unlike :func:`made_chain`, a directory found already there still has its
    parent fsynced (once per process and inode, see :class:`_KnownDurable`):
    its creator may not have fsynced it yet, and no answer may count on an
    entry that a power cut can take away.  ``storage`` itself is never created
    and its own entry is the operator's; no symlink is followed.  The caller
    closes the chain.
    """
    if not os.path.isdir(storage):
        raise FileNotFoundError(errno.ENOENT, "storage is not a directory", storage)
    chain = open_chain(storage, path, create=True, owner=owner)
    try:
        synced: set[int] = set()
        for i in range(1, len(chain.fds)):
            entry, ident = chain.paths[i], _ident(os.fstat(chain.fds[i]))
            if KNOWN_DURABLE.has(entry, ident):
                continue
            if i - 1 not in synced:
                _fsync_parent(chain, i - 1)
                synced.add(i - 1)
            KNOWN_DURABLE.add(entry, ident)
    except BaseException:
        chain.close()
        raise
    return chain


def _fsync_parent(chain: DirChain, i: int) -> None:
    """fsync ``chain``'s directory ``i``; for the storage itself (``i == 0``) every
    subdirectory it held before the fsync is then known durable too.

    After a restart, or beside another process that made them, the storage's
    ``AA`` directories are all there but none is known: without this each
    would cost a storage fsync on its first upload (256 per storage), with it
    one does.  Only the top level is recorded, so the memory stays bounded
    (about 256 entries a storage).
    """
    fd = chain.fds[i]
    if i != 0:
        os.fsync(fd)
        return
    dev = os.fstat(fd).st_dev
    with os.scandir(fd) as entries:
        found = [(e.name, e.inode()) for e in entries if e.is_dir(follow_symlinks=False)]
    os.fsync(fd)
    for name, inode in found:
        KNOWN_DURABLE.add(os.path.join(chain.paths[0], name), (dev, inode))


def durable_entry(dir_fd: int, path: str, ident: tuple[int, int]) -> None:
    """Make the entry ``path`` (the file ``ident``) durable in its directory, open as
    ``dir_fd`` (from :func:`durable_chain`: reached without following a link)."""
    if not KNOWN_DURABLE.has(path, ident):
        os.fsync(dir_fd)
        KNOWN_DURABLE.add(path, ident)


def known_durable(path: str, ident: tuple[int, int]) -> None:
    """Record that ``path``'s entry was just made durable by its parent's fsync."""
    KNOWN_DURABLE.add(path, ident)


OWNER_TTL = 1.0
"""Seconds an answer of :func:`owner_of` is reused: a small upload asks it four times
(two temps, two directory chains), and each ``stat`` is a hand-off of the GIL."""
_owners: dict[tuple[str, int], tuple[float, tuple[int, int] | None]] = {}


def owner_of(storage: str) -> tuple[int, int] | None:
    """(uid, gid) new entries on ``storage`` should get: the storage's, when we are root
    and it is another user's (a root-owned storage needs no ``chown``).  An operator's
    ``chown`` of the storage applies to entries made :data:`OWNER_TTL` seconds later."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    key = (storage, os.getegid())  # as root: only the group can differ
    now = time.monotonic()
    known = _owners.get(key)
    if known is not None and known[0] > now:
        return known[1]
    st = os.stat(storage)
    owner = None if (st.st_uid, st.st_gid) == (0, key[1]) else (st.st_uid, st.st_gid)
    if len(_owners) > 4096:  # bounded: a forgotten answer costs one stat
        _owners.clear()
    _owners[key] = (now + OWNER_TTL, owner)
    return owner


def _libc(name: str, argtypes: list[type]) -> Any | None:
    """``name`` from the C library, returning an int and setting errno; None where absent."""
    try:
        f = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    f.argtypes = argtypes
    return f


_fallocate = _libc("fallocate64", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])


def reserve(fd: int, offset: int, length: int) -> bool:
    """Allocate ``length`` bytes at ``offset`` of ``fd`` without changing its size.

    The blocks are taken from the filesystem now (so ``statvfs`` shows them as
    used to every process) and the writes that follow cannot run out of space.
    Raises ``OSError`` (``ENOSPC``) when the space is not there.  Returns False
    when the filesystem cannot reserve (no ``fallocate``): the writes then
    allocate as they go, as before.  glibc's ``posix_fallocate`` is not used:
    where the kernel cannot, it writes zeros over the whole length.
    """
    if _fallocate is None or length <= 0:
        return False
    if _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


_FALLOC_FL_PUNCH_HOLE = 0x02


def release_beyond(fd: int, size: int, reserved: int) -> None:
    """Give back the blocks reserved past ``size`` (the file's real end).

    ``fallocate(KEEP_SIZE)`` blocks past the end stay allocated after close:
    a chunked upload reserved in 64 MiB steps would keep them for good.  A
    hole is punched over them; where that is not supported, the file is grown
    by one byte and truncated back, which frees everything past its end.
    """
    if reserved <= size:
        return
    if _fallocate is not None and _fallocate(
            fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, size, reserved - size) == 0:
        return
    os.ftruncate(fd, size + 1)
    os.ftruncate(fd, size)


_sync_file_range = _libc("sync_file_range",
                        [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of ``fd`` to disk, without waiting.

    Not a replacement for fsync (which still runs before any answer): it only
    makes the disk work start while the rest of the body is still arriving.
    Silently nothing where the call does not exist.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


_syncfs = _libc("syncfs", [ctypes.c_int])


def syncfs_available() -> bool:
    """Whether the C library offers ``syncfs(2)``."""
    return _syncfs is not None


def syncfs(fd: int) -> None:
    """Make everything changed on ``fd``'s filesystem durable (``syncfs(2)``).

    Raises ``OSError`` on a failure the kernel reports (a writeback error of the
    filesystem since ``fd`` was opened, Linux >= 5.8), or ENOSYS where the C
    library has no such call.
    """
    if _syncfs is None:
        raise OSError(errno.ENOSYS, "syncfs is not available")
    if _syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_no_space(error: OSError) -> bool:
    """Whether ``error`` means the filesystem is full (or over quota)."""
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def advise_sequential(fd: int) -> None:
    """Tell the kernel to read ahead: files are read once, front to back."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass
