"""Paths below a storage, reached only through directory descriptors that never follow a symlink.

Everything below a storage belongs to the daemon's user, so a compromised
daemon (or anyone with its rights) can replace an ``AA/BB/CC`` directory, a
``.dat``, ``.stor-tmp`` or ``.stor-quarantine`` by a symbolic link pointing
anywhere (``/etc``, a root-only directory, another disk).  A tool run as root
(``stor scrub --repair`` when the storages belong to root) that resolved such
paths by name would read, write, rename into or unlink from the link's
target.  So every walk and every write below a storage starts from a
descriptor of the storage itself (the operator's configured path, which may
be a link: it is the operator's) and goes down one name at a time with
``openat(…, O_NOFOLLOW | O_DIRECTORY)``; files are opened with ``O_NOFOLLOW``
relative to their directory's descriptor, and renames and unlinks name their
directories by descriptor (``renameat``, ``unlinkat``).  A symlink on the way
is never followed: it raises :class:`SymlinkRefused` (an ``OSError``,
``ELOOP``), which scrub reports as a ``symlink`` and every other caller
treats as the failing storage it is.

Every function here blocks: call it from the disk pool, never the reactor.
"""

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""A directory below a storage: never through a symlink."""
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC
"""Added to every open of a file below a storage."""


class SymlinkRefused(OSError):
    """A name below a storage is a symbolic link: it is not followed."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link (not followed)", path)


def open_storage(storage: str) -> int:
    """A descriptor of the storage directory itself (the configured path)."""
    return os.open(storage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir_at(parent_fd: int, name: str, path: str) -> int:
    """The directory ``name`` in ``parent_fd``; :class:`SymlinkRefused` when it is a link.

    ``path`` is its full name, for messages."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR) and is_symlink_at(parent_fd, name):
            raise SymlinkRefused(path) from None
        e.filename = path
        raise


def open_file_at(dir_fd: int | None, name: str, flags: int, path: str, mode: int = 0o644) -> int:
    """The file ``name`` in ``dir_fd`` (None: a plain path), never through a link
    (:class:`SymlinkRefused`)."""
    try:
        return os.open(name, flags | FILE_FLAGS, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        e.filename = path
        raise


def is_symlink_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _parts(storage: str, path: str) -> list[str]:
    rel = os.path.relpath(path, storage)
    if rel == ".":
        return []
    parts = rel.split(os.sep)
    if os.path.isabs(rel) or ".." in parts:
        raise ValueError(f"{path} is not below the storage {storage}")
    return parts


class DirChain:
    """Open descriptors from a storage down to one directory below it (closed together).

    ``fds[0]`` is the storage, ``fds[-1]`` (:attr:`leaf`) the directory;
    ``paths`` their names, ``created`` the directories this chain made.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.paths: list[str] = []
        self.created: list[str] = []

    @property
    def leaf(self) -> int:
        return self.fds[-1]

    @property
    def path(self) -> str:
        return self.paths[-1]

    def take_leaf(self) -> int:
        """The leaf's descriptor, now the caller's to close (the chain keeps the rest)."""
        return self.fds.pop()

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> "DirChain":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_chain(storage: str, path: str, create: bool = False,
               owner: tuple[int, int] | None = None) -> DirChain:
    """Descriptors from ``storage`` down to directory ``path``, none through a symlink.

    With ``create``, missing directories are made (``mkdirat``; for ``owner``
    when given), the storage itself never.  Raises ``FileNotFoundError`` for a
    missing one otherwise, :class:`SymlinkRefused` for a link on the way.
    """
    chain = DirChain()
    try:
        chain.fds.append(open_storage(storage))
        chain.paths.append(storage)
        for part in _parts(storage, path):
            full = os.path.join(chain.path, part)
            try:
                fd = open_dir_at(chain.leaf, part, full)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, dir_fd=chain.leaf)
                    made = True
                except FileExistsError:
                    made = False  # another process made it meanwhile
                fd = open_dir_at(chain.leaf, part, full)
                if made:
                    chain.created.append(full)
                    if owner is not None:
                        os.fchown(fd, *owner)
            chain.fds.append(fd)
            chain.paths.append(full)
    except BaseException:
        chain.close()
        raise
    return chain


def split(storage: str, path: str) -> tuple[str, str]:
    """(directory, name) of ``path``; checks it lies below ``storage``."""
    _parts(storage, path)
    return os.path.dirname(path), os.path.basename(path)


@contextmanager
def opened_file(storage: str, path: str, flags: int = os.O_RDONLY) -> Iterator[int]:
    """The file ``path`` below ``storage``, opened without following any link."""
    directory, name = split(storage, path)
    with open_chain(storage, directory) as chain:
        fd = open_file_at(chain.leaf, name, flags, path)
    try:
        yield fd
    finally:
        os.close(fd)


def lstat(storage: str, path: str) -> os.stat_result:
    """``lstat`` of ``path`` below ``storage``, its directories reached without links."""
    directory, name = split(storage, path)
    with open_chain(storage, directory) as chain:
        try:
            return os.stat(name, dir_fd=chain.leaf, follow_symlinks=False)
        except OSError as e:
            e.filename = path
            raise


def unlink_durably(storage: str, path: str) -> None:
    """Remove the file ``path`` below ``storage`` and fsync its directory, both through
    descriptors reached without links (a link on the way: :class:`SymlinkRefused`;
    a ``.dat`` that is itself a link is removed, never its target)."""
    directory, name = split(storage, path)
    with open_chain(storage, directory) as chain:
        try:
            os.unlink(name, dir_fd=chain.leaf)
        except OSError as e:
            e.filename = path
            raise
        os.fsync(chain.leaf)
