"""Verified copies: a file reaches another storage whole and correct, or not at all.

Background repair, the move to another pair after a failed commit, and
``stor scrub --repair`` all need "make this storage hold a good copy of that
file".  The copy must never make things worse: the source is hashed while it
is copied into an owned temp file (:mod:`stor.disk.temps`), nothing is
installed unless it hashes to its name, and the final path only ever changes
through :func:`stor.disk.commit.install` under the SHA's lock.  Everything here
blocks: call it from a thread when on the reactor.
"""

import errno
import hashlib
import os
from collections.abc import Callable

from stor.core import layout
from stor.core.errors import HashMismatch
from stor.core.sha import parse_sha
from stor.disk import anchored
from stor.disk.commit import install
from stor.disk.fsio import advise_sequential, owner_of, write_all
from stor.disk.locks import ShaLocks
from stor.disk.temps import OwnedTemp, create_temp

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


class SourceGone(Exception):
    """The source was removed or replaced while it was copied (a DELETE, a quarantine)."""


def sha256_file(path: str, on_chunk: OnChunk | None = None, chunk_size: int = CHUNK) -> str:
    """The lower-case hex sha256 of the file at ``path``, read in ``chunk_size`` pieces.

    Streams, so memory stays flat for any file size; raises ``OSError`` when the
    file cannot be read (an I/O error is as bad as a corrupt byte to a caller).
    """
    with open(path, "rb", buffering=0) as f:
        return sha256_fd(f.fileno(), on_chunk, chunk_size)


def sha256_fd(fd: int, on_chunk: OnChunk | None = None, chunk_size: int = CHUNK) -> str:
    """The sha256 of the open file ``fd`` from its current position (see :func:`sha256_file`)."""
    hasher = hashlib.sha256()
    advise_sequential(fd)
    _pump(fd, hasher, None, on_chunk, chunk_size)
    return hasher.hexdigest()


def copy_verified(source_fd: int, source_path: str, storage: str, sha: str,
                  on_chunk: OnChunk | None = None, chunk_size: int = CHUNK) -> OwnedTemp:
    """A new fsynced temp file on ``storage`` holding the source, which hashed to ``sha``.

    The source's mtime is kept, so every replica answers the same
    Last-Modified.  Raises :class:`CorruptSource` when it does not hash to
    ``sha`` and ``OSError`` for I/O failures; no temp file is left behind then.
    """
    temp = create_temp(storage, sha, owner_of(storage))
    try:
        hasher = hashlib.sha256()
        _pump(source_fd, hasher, temp.fd, on_chunk, chunk_size, offset=0)
        actual = hasher.hexdigest()
        if actual != sha:
            raise CorruptSource(source_path, sha, actual)
        times = os.fstat(source_fd)
        os.utime(temp.fd, ns=(times.st_atime_ns, times.st_mtime_ns))
        os.fsync(temp.fd)
    except BaseException:
        temp.discard()
        raise
    return temp


def copy_to_twin(
    source_path: str,
    twin_storage: str,
    sha: str,
    locks: ShaLocks,
    *,
    on_chunk: OnChunk | None = None,
    chunk_size: int = CHUNK,
) -> str:
    """Copy ``source_path`` to ``sha``'s final path on ``twin_storage``; return that path.

    The copy is verified (see :func:`copy_verified`) and installed under the
    SHA's lock only if the source is still the file that was copied: a DELETE
    or a quarantine meanwhile wins (:class:`SourceGone`).  An existing (e.g.
    corrupt) file at the final path is replaced atomically; readers see the
    old file or the new one, never a mix.  A missing ``twin_storage`` raises
    ``FileNotFoundError``: a storage is never created.
    """
    sha = parse_sha(sha)
    if not os.path.isdir(twin_storage):
        raise FileNotFoundError(errno.ENOENT, "twin storage is not a directory", twin_storage)
    source_fd = open_source(source_path, sha)
    try:
        advise_sequential(source_fd)
        copied = os.fstat(source_fd)
        temp = copy_verified(source_fd, source_path, twin_storage, sha, on_chunk, chunk_size)
    finally:
        os.close(source_fd)
    try:
        with locks.hold(sha):
            if not same_file(source_path, copied, sha):
                raise SourceGone(f"{source_path} changed while it was copied")
            final = install(sha, [temp])[0]
    except BaseException:
        temp.discard()
        raise
    temp.close()
    return final


def open_source(path: str, sha: str) -> int:
    """Open a replica to read, never through a symlink: below its storage, through
    directory descriptors (:mod:`stor.disk.anchored`); elsewhere, the last name."""
    storage = layout.storage_of(path, sha)
    if storage is None:
        return anchored.open_file_at(None, path, os.O_RDONLY, path)
    with anchored.open_chain(storage, os.path.dirname(path)) as chain:
        return anchored.open_file_at(chain.leaf, os.path.basename(path), os.O_RDONLY, path)


def same_file(path: str, st: os.stat_result, sha: str | None = None) -> bool:
    """Whether ``path`` still names the file ``st`` was taken of (no symlink followed)."""
    storage = layout.storage_of(path, sha) if sha is not None else None
    try:
        now = anchored.lstat(storage, path) if storage is not None else os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def _pump(source_fd: int, hasher: "hashlib._Hash", dest_fd: int | None,
          on_chunk: OnChunk | None, chunk_size: int, offset: int | None = None) -> None:
    """Read ``source_fd`` to its end into one reused buffer, hashing (and writing) each chunk.

    With ``offset`` the source is read with ``preadv`` from there (its file
    position is left alone), else sequentially.
    """
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while True:
        if offset is None:
            n = os.readv(source_fd, [buf])
        else:
            n = os.preadv(source_fd, [buf], offset)
            offset += n
        if n == 0:
            return
        hasher.update(view[:n])
        if dest_fd is not None:
            write_all(dest_fd, view[:n])
        if on_chunk is not None:
            on_chunk(n)
