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
from stor.disk.fsio import fsync_dir, make_dirs, owner_of
from stor.disk.locks import ShaLocks


def quarantine_dir(storage: str) -> str:
    return os.path.join(storage, layout.QUARANTINE_DIR)


def quarantine(storage: str, sha: str, ident: tuple[int, int], locks: ShaLocks) -> str | None:
    """Move ``sha``'s replica on ``storage`` aside if it is still the file ``ident``
    (``(st_dev, st_ino)``) names; return where it went, None when it had changed."""
    path = layout.file_path(storage, sha)
    target_dir = quarantine_dir(storage)
    with locks.hold(sha):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        if (st.st_dev, st.st_ino) != ident:
            return None
        make_dirs(storage, target_dir, owner_of(storage))
        target = os.path.join(target_dir, f"{sha.upper()}.{int(time.time())}.dat")
        os.rename(path, target)
        fsync_dir(os.path.dirname(path))
        fsync_dir(target_dir)
    return target
