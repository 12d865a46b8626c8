"""The duplicate check: is this SHA already stored, *with its exact bytes, durably*?

A 200 to an upload names files as stored.  The cheap proxy ("a file is at the
path") answers 200 for a replica that was truncated, emptied or flipped, and
for one renamed into place by a process that died before fsyncing its
directory.  So a replica counts only when

* it hashes to its name (read whole, streamed: memory stays flat), and
* its data and every entry on its path (``AA``, ``AA/BB``, ``AA/BB/CC``, the
  ``.dat``) are durable: the file is fsynced and the parent of each entry
  fsynced, once per process and inode (:mod:`stor.disk.fsio`).

A pair is a duplicate only when both its members pass.  Replicas that do not
hash to their name are reported (the caller quarantines them and repairs from
the twin); a replica that cannot be read is simply not named.  Hashing is only
done when some pair holds the file on both members: a lone replica never
makes a 200, so it is not worth reading.  Blocking: run it in the disk pool,
under the SHA's lock.
"""

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from stor.core import layout
from stor.core.placement import Pair
from stor.disk.fsio import KNOWN_SYNCED, advise_sequential, durable_chain, durable_entry
from stor.disk.verified import VERIFIED, stamp_of

CHUNK = 1024 * 1024
SIDE_BY_SIDE = 1024 * 1024
"""Replicas larger than this in all are hashed by one thread each, side by side;
smaller ones one after the other (starting threads would cost more)."""


@dataclass(frozen=True)
class Damaged:
    """A replica found not to hash to its name."""

    storage: str
    path: str
    ident: tuple[int, int]
    size: int
    mtime: float
    actual: str


@dataclass
class Existing:
    """What the duplicate check found: verified, durable replicas only."""

    paths: list[str] = field(default_factory=list)
    """Every replica that holds the exact bytes, durably (lookup order)."""
    whole: list[Pair] = field(default_factory=list)
    """Pairs whose two members are both among :attr:`paths`."""
    damaged: list[Damaged] = field(default_factory=list)


OnDamaged = Callable[[Damaged], None]


def verified_existing(order: list[str], pairs: tuple[Pair, ...], sha: str) -> Existing:
    """Blocking: the replicas of ``sha`` a 200 may name (see the module doc).

    ``order`` is the lookup order (the paths keep it); ``pairs`` the
    configured pairs.
    """
    sizes = {s: size for s in order if (size := _file_size(layout.file_path(s, sha))) is not None}
    present = list(sizes)
    if not any(a in present and b in present for a, b in pairs):
        return Existing()
    found = Existing()
    good: set[str] = set()
    if sum(sizes.values()) <= SIDE_BY_SIDE:
        verdicts = [_verdict(s, sha) for s in present]  # two threads cost more than the hash
    else:
        with ThreadPoolExecutor(len(present)) as hashers:  # both members read side by side
            verdicts = list(hashers.map(lambda s: _verdict(s, sha), present))
    for storage, damage in zip(present, verdicts):
        path = layout.file_path(storage, sha)
        if damage is _UNREADABLE:
            continue  # unreadable here: not named, not a duplicate through it
        if damage is None:
            good.add(storage)
            found.paths.append(path)
        else:
            found.damaged.append(cast(Damaged, damage))  # the one kind left: _verdict's contract
    found.whole = [pair for pair in pairs if pair[0] in good and pair[1] in good]
    return found


_UNREADABLE = object()


def _file_size(path: str) -> int | None:
    """The size of the regular file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _verdict(storage: str, sha: str) -> "Damaged | None | object":
    try:
        return _verify_durably(storage, layout.file_path(storage, sha), sha)
    except OSError:
        return _UNREADABLE


def _verify_durably(storage: str, path: str, sha: str) -> Damaged | None:
    """Hash the replica at ``path``; when it is right, make it durable.  The
    damage otherwise.  ``OSError`` when it cannot be read (or synced)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(path)
        actual = hash_fd(fd)
        ident = (st.st_dev, st.st_ino)
        if actual != sha:
            return Damaged(storage, path, ident, st.st_size, st.st_mtime, actual)
        stamp = stamp_of(st)
        if not KNOWN_SYNCED.has(path, stamp):  # ext4 flushes the disk cache even when clean
            os.fsync(fd)  # its data and size: a file renamed in by a process that died unsynced
            KNOWN_SYNCED.add(path, stamp)
        VERIFIED.record(path, stamp)
    finally:
        os.close(fd)
    with durable_chain(storage, os.path.dirname(path)) as chain:
        durable_entry(chain.leaf, path, ident)
    return None


def hash_fd(fd: int) -> str:
    """The sha256 of the whole file ``fd`` (read with ``pread``, flat memory)."""
    hasher = hashlib.sha256()
    advise_sequential(fd)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    offset = 0
    while n := os.preadv(fd, [buf], offset):
        hasher.update(view[:n])
        offset += n
    return hasher.hexdigest()
