"""The ceilings: the least work each measured request implies, done in plain Python.

A ratio against a ceiling measured in the same run, on the same disk, stays
meaningful whatever the hardware, where an absolute MB/s would not.

- :func:`durable_two_replicas`: the least a durable two-replica store must do
  for one upload (the issue's POST ceiling);
- :func:`sha256_pass`: one core's ``hashlib.sha256`` over a cached file, half
  of the big-GET ceiling (a verified GET cannot be faster than its hash).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from harness import BenchError, stor_relative_path

CHUNK = 1 << 20
TEMP_DIR = ".bench-tmp"


def file_chunks(path: Path, chunk: int = CHUNK) -> Iterator[bytes]:
    """The file's bytes, read once, ``chunk`` at a time (from the page cache when warm)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while data := os.read(fd, chunk):
            yield data
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs_durably(storage: Path, leaf: Path) -> None:
    """Create the missing dirs from ``storage`` down to ``leaf``; fsync each changed parent."""
    created: list[Path] = []
    current = storage
    for part in leaf.relative_to(storage).parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            continue
        created.append(current)
    for parent in dict.fromkeys(directory.parent for directory in created):
        _fsync_dir(parent)


def durable_two_replicas(sha: str, chunks: Iterable[bytes], storages: tuple[Path, Path]
                         ) -> list[Path]:
    """Store one body on both ``storages``, durably; return the two final paths.

    Hash the body once while ``os.write``-ing it to a temp file on each
    storage, check the hash, fsync both temps, then per storage create the
    missing ``AA/BB/CC`` directories (fsyncing each parent that gained an
    entry), rename the temp into place and fsync its directory.  That is the
    commit stor's contract asks for (SPEC §2 "Writing"), without the HTTP,
    the locking or the bookkeeping.
    """
    temps = []
    fds = []
    try:
        for storage in storages:
            temp_dir = storage / TEMP_DIR
            temp_dir.mkdir(exist_ok=True)
            temp = temp_dir / f"{sha}.{os.getpid()}"
            fds.append(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            temps.append(temp)
        digest = hashlib.sha256()
        for data in chunks:
            digest.update(data)
            for fd in fds:
                _write_all(fd, data)
        if digest.hexdigest() != sha.lower():
            raise BenchError(f"ceiling: the body does not hash to {sha}")
        for fd in fds:
            os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)
    finals = []
    for storage, temp in zip(storages, temps):
        final = storage / stor_relative_path(sha)
        _make_dirs_durably(storage, final.parent)
        os.rename(temp, final)
        _fsync_dir(final.parent)
        finals.append(final)
    return finals


def timed_durable_store(sha: str, source: Path, storages: tuple[Path, Path]
                        ) -> tuple[float, list[Path]]:
    """Seconds for :func:`durable_two_replicas` of a file read once from the page cache."""
    started = time.perf_counter()
    finals = durable_two_replicas(sha, file_chunks(source), storages)
    return time.perf_counter() - started, finals


def sha256_pass(path: Path) -> tuple[float, str]:
    """Seconds for one core to hash the (cached) file, and the digest.

    ``readinto`` a reused buffer, so the figure is the hash and the copy out
    of the page cache, nothing else.
    """
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
    return time.perf_counter() - started, digest.hexdigest()
