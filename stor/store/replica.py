"""Copying a verified file to its twin: temp + fsync + rename, never a partial file.

Both ``stor scrub --repair`` and background replica repair need "make the twin
hold a good copy of this file".  The copy must never make things worse: the
source is hashed while it is copied and nothing reaches the final path unless
it hashes to its name, and the final path only ever changes by an atomic
rename of a complete, fsynced file.  Everything here blocks: call it from a
thread when on the reactor.
"""

import errno
import hashlib
import os
from collections.abc import Callable

from stor.core import layout
from stor.core.errors import HashMismatch
from stor.fs.fsio import fsync_dir, unlink_quietly, write_all
from stor.store.local import temp_dir, temp_name

CHUNK = 1024 * 1024
"""Read size: big enough for sequential disk throughput, small enough for flat memory."""

OnChunk = Callable[[int], None]
"""Called with the size of every chunk read: throttling and progress hook in here."""


class CorruptSource(HashMismatch):
    """The source does not hash to its name: copying it would spread the damage."""

    def __init__(self, path: str, expected: str, actual: str) -> None:
        super().__init__(expected, actual)
        self.path = path
        self.args = (f"{path} hashes to {actual}, not {expected}",)


def sha256_file(path: str, on_chunk: OnChunk | None = None, chunk_size: int = CHUNK) -> str:
    """The lower-case hex sha256 of the file at ``path``, read in ``chunk_size`` pieces.

    Streams, so memory stays flat for any file size; raises ``OSError`` when the
    file cannot be read (an I/O error is as bad as a corrupt byte to a caller).
    """
    hasher = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        _advise_sequential(f.fileno())
        _pump(f.fileno(), hasher, None, on_chunk, chunk_size)
    return hasher.hexdigest()


def copy_to_twin(
    source_path: str,
    twin_storage: str,
    sha: str,
    *,
    on_chunk: OnChunk | None = None,
    chunk_size: int = CHUNK,
) -> str:
    """Copy ``source_path`` to ``sha``'s final path on ``twin_storage``; return that path.

    The source is hashed as it is copied into
    ``<twin>/.stor-tmp/<sha>.<pid>.<rand>.tmp`` (the name the temp sweeper
    understands, on the twin's filesystem so the rename is atomic); only when it
    hashes to ``sha`` is the temp fsynced and renamed over the final path and
    the directory fsynced.  An existing (e.g. corrupt) file at the final path is
    replaced atomically; readers see the old file or the new one, never a mix.
    The source's mtime is kept, so both replicas answer the same Last-Modified.

    Raises :class:`CorruptSource` when the source does not hash to ``sha``,
    :class:`~stor.errors.MalformedSha` for a bad ``sha``, ``FileNotFoundError``
    when ``twin_storage`` is not a directory (a storage is never created: an
    unmounted disk must not fill the root filesystem), and ``OSError`` for
    I/O failures.  On any failure the temp file is gone and the final path is
    untouched.  When run as root, directories and the file created on the twin
    get the twin storage's owner, so the daemon (running as another user) can
    still write next to them.
    """
    sha = layout.parse_sha(sha)
    if not os.path.isdir(twin_storage):
        raise FileNotFoundError(errno.ENOENT, "twin storage is not a directory", twin_storage)
    final = layout.file_path(twin_storage, sha)
    owner = _owner_to_copy(twin_storage)
    with open(source_path, "rb", buffering=0) as source:
        _advise_sequential(source.fileno())
        times = os.fstat(source.fileno())
        temp = _new_temp(twin_storage, sha, owner)
        try:
            _fill_temp(source.fileno(), temp, source_path, sha, on_chunk, chunk_size)
            os.utime(temp, ns=(times.st_atime_ns, times.st_mtime_ns))
            _make_dirs(twin_storage, os.path.dirname(final), owner)
            os.rename(temp, final)
        except BaseException:
            unlink_quietly(temp)
            raise
    fsync_dir(os.path.dirname(final))
    return final


def _fill_temp(
    source_fd: int, temp: str, source_path: str, sha: str,
    on_chunk: OnChunk | None, chunk_size: int,
) -> None:
    """Copy and hash the source into ``temp``; fsync it only if the hash matches."""
    fd = os.open(temp, os.O_WRONLY | os.O_CLOEXEC)
    try:
        hasher = hashlib.sha256()
        _pump(source_fd, hasher, fd, on_chunk, chunk_size)
        actual = hasher.hexdigest()
        if actual != sha:
            raise CorruptSource(source_path, sha, actual)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pump(
    source_fd: int, hasher: "hashlib._Hash", dest_fd: int | None,
    on_chunk: OnChunk | None, chunk_size: int,
) -> None:
    """Read ``source_fd`` to its end into one reused buffer, hashing (and writing) each chunk."""
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while True:
        n = os.readv(source_fd, [buf])
        if n == 0:
            return
        hasher.update(view[:n])
        if dest_fd is not None:
            write_all(dest_fd, view[:n])
        if on_chunk is not None:
            on_chunk(n)


def _new_temp(storage: str, sha: str, owner: tuple[int, int] | None) -> str:
    """Create an empty temp file for ``sha`` in ``storage``'s temp directory."""
    directory = _make_dirs(storage, temp_dir(storage), owner)
    path = os.path.join(directory, temp_name(sha))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return path


def _make_dirs(storage: str, path: str, owner: tuple[int, int] | None) -> str:
    """Create the missing directories from ``storage`` down to ``path`` (below it)."""
    if os.path.isdir(path):
        return path
    current = storage
    for part in os.path.relpath(path, storage).split(os.sep):
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
        except FileExistsError:
            continue
        if owner is not None:
            os.chown(current, *owner)
    return path


def _owner_to_copy(storage: str) -> tuple[int, int] | None:
    """(uid, gid) new entries should get: the storage's, when we are root; else None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    st = os.stat(storage)
    return st.st_uid, st.st_gid


def _advise_sequential(fd: int) -> None:
    """Tell the kernel to read ahead: files are read once, front to back."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except OSError:
            pass


