"""Whether a storage directory can serve and take files (docs/SPEC.md §2, §9).

A storage is unhealthy when it is missing, is not a directory, cannot be
read, or is *on the root filesystem*: its ``st_dev`` equals that of ``/``
(storages may sit below a mount point, so ``os.path.ismount`` is not the
test).  A disk that failed to mount leaves an empty directory on ``/``;
writing to it would fill the root filesystem.

``check_mounts`` has three settings: ``True`` (the root test counts for
``/status`` and placement), ``False`` (never checked), and ``None`` — absent
from the config, as in every file the old service ran on: ``/status`` reports
a storage on ``/`` as the old service did, and placement skips it only when
some other configured storage is on a filesystem of its own (one disk failed
to mount); when every storage is on ``/``, as in test setups, placement
behaves as the old service.  Everything here blocks.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass

ON_ROOT = "is on the / filesystem (not a mounted disk)"


@dataclass(frozen=True)
class StorageHealth:
    """One storage, as seen now."""

    path: str
    problem: str | None
    """Why ``/status`` fails it (None: healthy)."""
    placeable: bool
    """Whether new files may go to it (before ``writable_pairs_regex``)."""
    free_bytes: int | None
    """``statvfs`` bytes available to stor; None when it cannot be read."""
    size_bytes: int | None = None
    """``statvfs`` total bytes of its filesystem (for "% full"); None when not read."""

    @property
    def ok(self) -> bool:
        return self.problem is None


def free_bytes(storage: str) -> int | None:
    """Bytes available to stor on ``storage``'s filesystem; None when unreadable."""
    return space(storage)[0]


def space(storage: str) -> tuple[int | None, int | None]:
    """(bytes available to stor, total bytes) of ``storage``'s filesystem, from one
    ``statvfs``; (None, None) when unreadable."""
    try:
        st = os.statvfs(storage)
    except OSError:
        return None, None
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _basic_problem(storage: str) -> tuple[str | None, int | None]:
    """(why it cannot serve at all, its st_dev)."""
    try:
        st = os.stat(storage)
    except FileNotFoundError:
        return "does not exist", None
    except OSError as e:
        return f"cannot be read: {e.strerror}", None
    if not os.path.isdir(storage):
        return "is not a directory", None
    return None, st.st_dev


def check_storages(storages: Sequence[str], check_mounts: bool | None,
                   with_free: bool = True) -> list[StorageHealth]:
    """The health of every storage, in order (see the module docstring for the rules)."""
    root_dev = os.stat("/").st_dev
    basics = [(s, *_basic_problem(s)) for s in storages]
    some_mounted = any(dev is not None and dev != root_dev for _, _, dev in basics)
    found = []
    for storage, problem, dev in basics:
        on_root = dev == root_dev
        if on_root and check_mounts is not False:
            problem = ON_ROOT
        free, size = space(storage) if with_free and dev is not None else (None, None)
        found.append(StorageHealth(storage, problem,
                                   _placeable(dev, on_root, check_mounts, some_mounted), free,
                                   size))
    return found


def _placeable(dev: int | None, on_root: bool, check_mounts: bool | None,
               some_mounted: bool) -> bool:
    if dev is None:
        return False  # missing, not a directory, unreadable
    if not on_root or check_mounts is False:
        return True
    return check_mounts is None and not some_mounted
