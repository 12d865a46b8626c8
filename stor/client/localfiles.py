"""Blocking file work of the client: hashing, reading uploads, ``.part`` files.

Everything here blocks and runs in a thread (:mod:`stor.client.threads`),
reading and writing in pieces so memory stays flat for any file size.
"""

import errno
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable

from stor.client.errors import FileChanged, PartBusy

CHUNK = 1024 * 1024
"""Read size: big enough for sequential throughput, small enough for flat memory."""


def sha256_file(path: str, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(lower-case hex sha256, size) of the file at ``path``, read in pieces."""
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return hasher.hexdigest(), size


def hashes_to(path: str, sha: str) -> bool:
    """Whether a regular file is at ``path`` and holds exactly ``sha``'s bytes."""
    try:
        if not os.path.isfile(path):
            return False
        return sha256_file(path)[0] == sha
    except OSError:
        return False


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename into ``path`` durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Reader:
    """An upload's source: exactly ``size`` bytes of ``path``, hashed as they are read.

    The hash of what was actually sent tells a file that changed after it was
    hashed (the server's 412) from bytes damaged on the way.
    """

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.position = 0
        self._hasher = hashlib.sha256()
        self._lock = threading.Lock()  # an abandoned upload closes while a read may run
        self._file = open(path, "rb", buffering=0)

    def read(self, n: int = CHUNK) -> bytes:
        """The next piece; closes the file after the last one.

        Raises :class:`FileChanged` when the file ends early (it was truncated).
        """
        with self._lock:
            want = min(n, self.size - self.position)
            data = self._file.read(want) if want else b""
            if len(data) < want:
                self._file.close()
                raise FileChanged(f"{self.path} shrank while uploading", status="error")
            self._hasher.update(data)
            self.position += len(data)
            if self.position == self.size:
                self._file.close()
            return data

    def sent_sha(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class HashOnly:
    """A download that is hashed and dropped (``stor verify``)."""

    def __init__(self) -> None:
        self._hasher = hashlib.sha256()
        self.size = 0

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self._hasher.update(chunk)
            self.size += len(chunk)

    def reset(self) -> None:
        self._hasher = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


OPEN_PARTS: set["PartFile"] = set()
"""The ``.part`` files this process holds open: an interrupted run drops the empty ones
(:func:`drop_empty_parts`), which no later run could resume from."""


def drop_empty_parts() -> None:
    """Remove every open ``.part`` that holds no byte (called when a signal stops ``get``)."""
    for part in list(OPEN_PARTS):
        if part.size == 0:
            try:
                os.unlink(part.path)
            except OSError:
                pass


class PartFile:
    """``DIR/.<sha>.part``: a resumable partial download that hashes what it holds.

    Opening it takes an exclusive ``flock`` (two ``stor get`` writing the same
    ``.part`` would ruin each other's progress) and hashes the bytes already
    there, so a resumed download only fetches the rest.  Nothing reaches the
    final name but a complete file whose hash was checked by the caller.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise PartBusy(f"another stor get is writing {path}") from None
            raise
        self._hasher = hashlib.sha256()
        self.size = 0
        while chunk := os.read(self._fd, CHUNK):
            self._hasher.update(chunk)
            self.size += len(chunk)
        OPEN_PARTS.add(self)

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            write_all(self._fd, chunk)
            self._hasher.update(chunk)
            self.size += len(chunk)

    def reset(self) -> None:
        """Empty the file: the download restarts from byte zero."""
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def commit(self, final: str) -> None:
        """fsync, rename to ``final`` (replacing what is there) and make the rename durable."""
        os.fsync(self._fd)
        os.replace(self.path, final)
        fsync_dir(os.path.dirname(final))
        OPEN_PARTS.discard(self)
        os.close(self._fd)

    def close(self) -> None:
        """Give up for now: keep what was downloaded for a later resume, drop an empty file."""
        if self.size == 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        OPEN_PARTS.discard(self)
        os.close(self._fd)
