"""The durable commit: verified temp files renamed to their final paths.

This is the one place a final ``.dat`` path changes.  The caller has written
each temp file completely, checked its hash, fsynced it, and holds the SHA's
host-wide lock (:mod:`stor.disk.locks`).  :func:`install` then creates the
missing ``AA/BB/CC`` directories and makes every entry of that chain durable
(the parent of each fsynced, also of directories another upload or process
created and may not have fsynced yet: :func:`~stor.disk.fsio.durable_dirs`),
renames every temp over its final path and fsyncs the final
directories: when it returns, the files survive a power cut.

If a member fails on the way, the final paths this call created are put back
where they came from (their temp paths), so the caller still holds verified
temps to try elsewhere, and nothing this call did not create is ever removed.
"""

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from stor.core import layout
from stor.disk.fsio import (KNOWN_SYNCED, durable_dirs, fsync_dir, known_durable, owner_of,
                            unlink_quietly)
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
    """
    finals = [layout.file_path(t.storage, sha) for t in temps]
    for temp, final in zip(temps, finals):
        _step(temp.storage, durable_dirs, temp.storage, os.path.dirname(final),
              owner_of(temp.storage))
    moved: list[tuple[OwnedTemp, str]] = []
    try:
        for temp, final in zip(temps, finals):
            existed = os.path.lexists(final)
            _step(temp.storage, os.rename, temp.path, final)
            if not existed:
                moved.append((temp, final))
        for temp, final in zip(temps, finals):
            _step(temp.storage, fsync_dir, os.path.dirname(final))
            st = os.fstat(temp.fd)
            known_durable(final, (st.st_dev, st.st_ino))
            VERIFIED.record(final, stamp_of(st))  # hashed before install: HEAD may trust it
            KNOWN_SYNCED.add(final, stamp_of(st))  # its data was fsynced before the rename
    except MemberFailed:
        for temp, final in moved:
            _undo(temp, final)
        raise
    return finals


def _step(storage: str, f: Callable[..., T], *args: Any) -> T:
    try:
        return f(*args)
    except OSError as e:
        raise MemberFailed(storage, e) from e


def _undo(temp: OwnedTemp, final: str) -> None:
    """Take back a final path this commit created: back to its temp path if possible."""
    try:
        os.rename(final, temp.path)
    except OSError:
        unlink_quietly(final)
    try:
        fsync_dir(os.path.dirname(final))
    except OSError:
        pass
