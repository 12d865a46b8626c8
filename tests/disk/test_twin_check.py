"""The twin check of reads (:meth:`stor.disk.repair.Repairer.found`): a twin found whole
is trusted for :data:`~stor.disk.repair.TWIN_RECHECK` seconds, then looked at again.

Real files; the disk pool runs its jobs at once (``SyncPool``), so a repair the
check starts is done when ``found`` returns; time is a number the test moves.
"""

import os
from pathlib import Path

import pytest

from support.helpers import sha256
from support.store_fakes import RecordingMetrics, SyncPool
from stor.core import layout
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.repair import TWIN_RECHECK, Repairer


class Reads:
    """A repairer over the test's storages, its clock, and one file on the first pair."""

    def __init__(self, storage_dirs: list[list[str]], tmp_path: Path) -> None:
        local = LocalStore([tuple(p) for p in storage_dirs], SyncPool(), check_mounts=False)
        self.now = 1000.0
        self.repairer = Repairer(local, ShaLocks(str(tmp_path / "locks")), RecordingMetrics(),
                                 clock=lambda: self.now)
        self.data = os.urandom(5000)
        self.sha = sha256(self.data)
        self.storage = storage_dirs[0][0]
        self.read, self.twin = (Path(layout.file_path(s, self.sha)) for s in storage_dirs[0])
        self.read.parent.mkdir(parents=True)
        self.read.write_bytes(self.data)

    def found(self, trusting: bool = True) -> None:
        self.repairer.found(self.sha, self.storage, len(self.data), trusting)


@pytest.fixture
def reads(storage_dirs: list[list[str]], tmp_path: Path) -> Reads:
    return Reads(storage_dirs, tmp_path)


def test_a_twin_found_whole_is_trusted_for_a_while_then_checked_again(reads):
    reads.twin.parent.mkdir(parents=True)
    reads.twin.write_bytes(reads.data)
    reads.found()  # whole: trusted from now
    reads.twin.write_bytes(b"")
    reads.now += TWIN_RECHECK * 0.9
    reads.found()
    assert reads.twin.read_bytes() == b""  # not looked at again yet
    reads.now += TWIN_RECHECK * 0.2
    reads.found()
    assert reads.twin.read_bytes() == reads.data  # looked at, found empty, brought back


def test_a_missing_twin_is_never_trusted(reads):
    reads.found()
    assert reads.twin.read_bytes() == reads.data
    reads.twin.unlink()  # lost again at the same moment: the next read still looks
    reads.found()
    assert reads.twin.read_bytes() == reads.data


def test_a_read_that_had_to_search_looks_at_the_twin_at_once(reads):
    reads.found()  # brought back, then found whole and trusted
    reads.found()
    reads.twin.unlink()
    reads.found(trusting=False)
    assert reads.twin.read_bytes() == reads.data
