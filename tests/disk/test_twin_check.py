"""The twin check of reads (:meth:`stor.disk.repair.Repairer.found`): a twin found whole
is trusted for :data:`~stor.disk.repair.TWIN_RECHECK` seconds, then looked at again.

Real files; the disk pool runs its jobs at once (``SyncPool``), so a repair the
check starts is done when ``found`` returns; time is a number the test moves.
"""

import os
from pathlib import Path

from support.helpers import sha256
from support.store_fakes import RecordingMetrics, SyncPool
from stor.core import layout
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.repair import TWIN_RECHECK, Repairer


def test_a_twin_found_whole_is_trusted_for_a_while_then_checked_again(storage_dirs, tmp_path):
    local = LocalStore([tuple(p) for p in storage_dirs], SyncPool(), check_mounts=False)
    now = [1000.0]
    repairer = Repairer(local, ShaLocks(str(tmp_path / "locks")), RecordingMetrics(),
                        clock=lambda: now[0])
    data = os.urandom(5000)
    sha = sha256(data)
    read, twin = (Path(layout.file_path(s, sha)) for s in storage_dirs[0])
    for path in (read, twin):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    repairer.found(sha, storage_dirs[0][0], len(data))  # whole: trusted from now
    twin.write_bytes(b"")
    now[0] += TWIN_RECHECK * 0.9
    repairer.found(sha, storage_dirs[0][0], len(data))
    assert twin.read_bytes() == b""  # not looked at again yet
    now[0] += TWIN_RECHECK * 0.2
    repairer.found(sha, storage_dirs[0][0], len(data))
    assert twin.read_bytes() == data  # looked at, found empty, brought back


def test_a_missing_twin_is_never_trusted(storage_dirs, tmp_path):
    local = LocalStore([tuple(p) for p in storage_dirs], SyncPool(), check_mounts=False)
    repairer = Repairer(local, ShaLocks(str(tmp_path / "locks")), RecordingMetrics(),
                        clock=lambda: 1000.0)
    data = os.urandom(3000)
    sha = sha256(data)
    read, twin = (Path(layout.file_path(s, sha)) for s in storage_dirs[1])
    read.parent.mkdir(parents=True)
    read.write_bytes(data)
    repairer.found(sha, storage_dirs[1][0], len(data))
    assert twin.read_bytes() == data
    twin.unlink()  # lost again at the same moment: the next read still looks
    repairer.found(sha, storage_dirs[1][0], len(data))
    assert twin.read_bytes() == data


def test_a_read_that_had_to_search_looks_at_the_twin_at_once(storage_dirs, tmp_path):
    local = LocalStore([tuple(p) for p in storage_dirs], SyncPool(), check_mounts=False)
    repairer = Repairer(local, ShaLocks(str(tmp_path / "locks")), RecordingMetrics(),
                        clock=lambda: 1000.0)
    data = os.urandom(4000)
    sha = sha256(data)
    read, twin = (Path(layout.file_path(s, sha)) for s in storage_dirs[0])
    for path in (read, twin):
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    repairer.found(sha, storage_dirs[0][0], len(data))
    twin.unlink()
    repairer.found(sha, storage_dirs[0][0], len(data), trusting=False)
    assert twin.read_bytes() == data
