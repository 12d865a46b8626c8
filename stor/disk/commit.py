"""The durable commit: verified temp files renamed to their final paths.

This is the one place a final ``.dat`` path changes.  The caller has written
each temp file completely, checked its hash, fsynced it, and holds the SHA's
host-wide lock (:mod:`stor.disk.locks`).  :func:`install` then creates the
missing ``AA/BB/CC`` directories and makes every entry of that chain durable
(the parent of each fsynced, also of directories another upload or process
created and may not have fsynced yet: :func:`~stor.disk.fsio.durable_chain`),
renames every temp over its final path and fsyncs the final
directories: when it returns, the files survive a power cut.

If a member fails on the way, the final paths this call created are put back
where they came from (their temp paths), so the caller still holds verified
temps to try elsewhere, and nothing this call did not create is ever removed.
"""

import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any, TypeVar

from stor.core import layout
from stor.disk.anchored import DirChain
from stor.disk.fsio import KNOWN_SYNCED, durable_chain, known_durable, owner_of
from stor.disk.temps import OwnedTemp
from stor.disk.verified import VERIFIED, stamp_of

T = TypeVar("T")


class MemberFailed(Exception):
    """A storage failed while a file was written to or placed on it."""

    def __init__(self, storage: str, error: OSError) -> None:
        super().__init__(f"{storage}: {error.strerror or error}")
        self.storage = storage
        self.error = error


def install(sha: str, temps: Sequence[OwnedTemp]) -> list[str]:
    """Rename each temp to ``sha``'s final path on its storage; return those paths.

    Blocking; the caller holds ``sha``'s lock.  Raises :class:`MemberFailed`
    naming the first storage that failed, after undoing what this call did.
    The temps stay open (and owned) either way: the caller closes them.
    The final directories are reached through descriptors that never follow
    a symlink (:mod:`stor.disk.anchored`), and the renames name both
    directories by descriptor: a link planted below a storage is refused,
    never written through.
    """
    finals = [layout.file_path(t.storage, sha) for t in temps]
    with ExitStack() as opened:
        leaves: list[DirChain] = []
        for temp, final in zip(temps, finals):
            leaves.append(opened.enter_context(_step(
                temp.storage, durable_chain, temp.storage, os.path.dirname(final),
                owner_of(temp.storage))))
        moved: list[tuple[OwnedTemp, DirChain, str]] = []
        try:
            for temp, leaf, final in zip(temps, leaves, finals):
                name = os.path.basename(final)
                existed = _step(temp.storage, _exists_at, leaf.leaf, name)
                _step(temp.storage, _rename_into, temp, leaf.leaf, name)
                if not existed:
                    moved.append((temp, leaf, name))
            for temp, leaf, final in zip(temps, leaves, finals):
                _step(temp.storage, os.fsync, leaf.leaf)
                st = os.fstat(temp.fd)
                known_durable(final, (st.st_dev, st.st_ino))
                VERIFIED.record(final, stamp_of(st))  # hashed before install: HEAD may trust it
                KNOWN_SYNCED.add(final, stamp_of(st))  # its data was fsynced before the rename
        except MemberFailed:
            for temp, leaf, name in moved:
                _undo(temp, leaf.leaf, name)
            raise
    return finals


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _rename_into(temp: OwnedTemp, dir_fd: int, name: str) -> None:
    if temp.dir_fd >= 0:
        os.rename(temp.name, name, src_dir_fd=temp.dir_fd, dst_dir_fd=dir_fd)
    else:
        os.rename(temp.path, name, dst_dir_fd=dir_fd)


def _step(storage: str, f: Callable[..., T], *args: Any) -> T:
    try:
        return f(*args)
    except OSError as e:
        raise MemberFailed(storage, e) from e


def _undo(temp: OwnedTemp, dir_fd: int, name: str) -> None:
    """Take back a final path this commit created: back to its temp path if possible."""
    try:
        if temp.dir_fd >= 0:
            os.rename(name, temp.name, src_dir_fd=dir_fd, dst_dir_fd=temp.dir_fd)
        else:
            os.rename(name, temp.path, src_dir_fd=dir_fd)
    except OSError:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
