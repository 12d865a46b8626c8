"""Moving a corrupt replica aside, so it is never served again and can be inspected.

A replica that does not hash to its name is renamed into
``<storage>/.stor-quarantine/<SHA>.<unix time>.dat`` (same filesystem, so the
move is atomic and copies nothing).  stor never deletes what it quarantined:
an operator looks at it (which disk, which bytes changed) and removes it.
The move happens under the SHA's lock and only if the path still names the
very file found corrupt: a repair may have replaced it with a good copy
meanwhile.  Blocking: call it from the disk pool.
"""

import os
import time

from stor.core import layout
from stor.disk.anchored import open_chain
from stor.disk.fsio import made_chain, owner_of
from stor.disk.locks import ShaLocks


def quarantine_dir(storage: str) -> str:
    return os.path.join(storage, layout.QUARANTINE_DIR)


def quarantine(storage: str, sha: str, ident: tuple[int, int], locks: ShaLocks) -> str | None:
    """Move ``sha``'s replica on ``storage`` aside if it is still the file ``ident``
    (``(st_dev, st_ino)``) names; return where it went, None when it had changed.

    Both directories are reached through descriptors that follow no symlink
    (:mod:`stor.disk.anchored`): a ``.stor-quarantine`` or an ``AA/BB/CC``
    replaced by a link raises :class:`~stor.disk.anchored.SymlinkRefused`
    and nothing moves."""
    path = layout.file_path(storage, sha)
    name = os.path.basename(path)
    with locks.hold(sha):
        try:
            source = open_chain(storage, os.path.dirname(path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        with source:
            try:
                st = os.stat(name, dir_fd=source.leaf, follow_symlinks=False)
            except FileNotFoundError:
                return None
            if (st.st_dev, st.st_ino) != ident:
                return None
            with made_chain(storage, quarantine_dir(storage), owner_of(storage)) as target_dir:
                target = f"{sha.upper()}.{int(time.time())}.dat"
                os.rename(name, target, src_dir_fd=source.leaf, dst_dir_fd=target_dir.leaf)
                os.fsync(source.leaf)
                os.fsync(target_dir.leaf)
                return os.path.join(target_dir.path, target)
