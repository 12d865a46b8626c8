"""Small uploads stored in batches (:mod:`stor.disk.batch`, :func:`stor.disk.small.store_batch`).

Real directories, a real lock directory, real ``syncfs``; no reactor: the
batcher's hand-back to the reactor is a queue the test reads.
"""

import fcntl
import os
import queue
from pathlib import Path
from typing import Any

import pytest

from support.helpers import sha256, temp_files
from support.store_fakes import SyncPool
from stor.core import layout
from stor.core.errors import HashMismatch
from stor.core.results import Duplicate, Stored
from stor.disk.batch import SmallBatcher
from stor.disk.groupsync import GroupSync
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.small import LOCK_TAKEN, SmallJob, store_batch


@pytest.fixture
def local(storage_dirs: list[list[str]]) -> LocalStore:
    return LocalStore([tuple(p) for p in storage_dirs], SyncPool(), check_mounts=False)


@pytest.fixture
def locks(tmp_path: Path) -> ShaLocks:
    return ShaLocks(str(tmp_path / "locks"))


@pytest.fixture
def group(storage_dirs: list[list[str]]) -> GroupSync:
    group = GroupSync()
    fd = os.open(storage_dirs[0][0], os.O_RDONLY)
    try:
        if not group.covers(fd):
            pytest.skip("syncfs is not trusted on this filesystem: no group commit")
    finally:
        os.close(fd)
    return group


def bodies(n: int, size: int = 3000) -> list[bytes]:
    return [os.urandom(size) + bytes([i]) for i in range(n)]


def stored_exactly(outcome: object, data: bytes) -> bool:
    return (isinstance(outcome, Stored) and len(outcome.paths) == 2
            and all(Path(p).read_bytes() == data for p in outcome.paths))


def test_a_batch_stores_every_upload_with_two_shared_flushes(local, locks, group, storage_dirs):
    data = bodies(6)
    outcomes = store_batch([SmallJob(sha256(d), d) for d in data], local, locks, group)
    assert all(stored_exactly(o, d) for o, d in zip(outcomes, data))
    assert group.rounds == 2  # one for the data of all six, one for their entries
    assert temp_files(storage_dirs) == []


def test_the_same_sha_twice_in_a_batch_is_left_for_the_lock_waiter(local, locks, group):
    data = os.urandom(2000)
    first, second = store_batch([SmallJob(sha256(data), data), SmallJob(sha256(data), data)],
                                local, locks, group)
    assert stored_exactly(first, data)
    assert second is LOCK_TAKEN
    [again] = store_batch([SmallJob(sha256(data), data)], local, locks, group)
    assert isinstance(again, Duplicate) and sorted(again.paths) == sorted(first.paths)


def test_a_sha_locked_by_another_holder_is_left_out_and_the_rest_stored(local, locks, group,
                                                                        tmp_path):
    held, free = bodies(2)
    locks.prepare()
    other = os.open(tmp_path / "locks" / (sha256(held)[:3] + ".lock"), os.O_RDONLY | os.O_CREAT,
                    0o640)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)  # as another process holding it would
        outcomes = store_batch([SmallJob(sha256(held), held), SmallJob(sha256(free), free)],
                               local, locks, group)
    finally:
        os.close(other)
    assert outcomes[0] is LOCK_TAKEN
    assert stored_exactly(outcomes[1], free)
    assert not os.path.exists(layout.file_path(local.pairs[0][0], sha256(held)))
    assert not os.path.exists(layout.file_path(local.pairs[1][0], sha256(held)))


def test_a_body_not_matching_its_sha_fails_alone_and_leaves_nothing(local, locks, group,
                                                                    storage_dirs):
    good, bad = bodies(2)
    outcomes = store_batch([SmallJob(sha256(good), good), SmallJob(sha256(good[::-1]), bad)],
                           local, locks, group)
    assert stored_exactly(outcomes[0], good)
    assert isinstance(outcomes[1], HashMismatch)
    assert temp_files(storage_dirs) == []


def test_a_stored_file_in_a_batch_is_a_duplicate_naming_its_replicas(local, locks, group):
    old, new = bodies(2)
    [first] = store_batch([SmallJob(sha256(old), old)], local, locks, group)
    outcomes = store_batch([SmallJob(sha256(new), new), SmallJob(sha256(old), old)],
                           local, locks, group)
    assert stored_exactly(outcomes[0], new)
    assert isinstance(outcomes[1], Duplicate)
    assert sorted(outcomes[1].paths) == sorted(first.paths)


class QueueReactor:
    """``callFromThread`` into a queue the test drains (the reactor's hand-back)."""

    def __init__(self) -> None:
        self.calls: queue.Queue[Any] = queue.Queue()

    def callFromThread(self, f: Any, *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, done: list[object], n: int) -> None:
        while len(done) < n:
            f, args = self.calls.get(timeout=10)
            f(*args)


def test_the_batcher_answers_every_upload_and_stops(local, locks, group):
    reactor = QueueReactor()
    batcher = SmallBatcher(reactor, local, locks, group)  # type: ignore[arg-type]
    data = bodies(10)
    done: list[object] = []
    for d in data:
        batcher.submit(SmallJob(sha256(d), d)).addBoth(done.append)
    reactor.run_until(done, len(data))
    batcher.stopService()
    assert all(isinstance(o, Stored) for o in done)
    assert {Path(o.paths[0]).read_bytes() for o in done} == set(data)  # type: ignore[attr-defined]
    assert 1 <= batcher.batches <= len(data)


def test_a_failing_job_is_answered_with_its_error(local, locks, group):
    reactor = QueueReactor()
    batcher = SmallBatcher(reactor, local, locks, group)  # type: ignore[arg-type]
    data = os.urandom(1000)
    done: list[object] = []
    batcher.submit(SmallJob(sha256(data), data[1:])).addBoth(done.append)
    reactor.run_until(done, 1)
    batcher.stopService()
    assert done[0].check(HashMismatch)  # type: ignore[attr-defined]


def test_identical_uploads_over_both_threads_are_all_answered(local, locks, group):
    """Many jobs over both threads, four of each SHA (as parallel identical uploads
    make them): every one is answered, each SHA stored once; the others found it
    stored or its lock taken.  (A thread once kept jobs it gathered without ever
    storing them: ``tests/disk/test_integrity.py``'s parallel uploads found it.)"""
    reactor = QueueReactor()
    batcher = SmallBatcher(reactor, local, locks, group, threads=2)  # type: ignore[arg-type]
    distinct = bodies(30, size=1000)
    done: list[object] = []
    for d in distinct:
        for _ in range(4):
            batcher.submit(SmallJob(sha256(d), d)).addBoth(done.append)
    reactor.run_until(done, 4 * len(distinct))
    batcher.stopService()
    assert all(isinstance(o, (Stored, Duplicate)) or o is LOCK_TAKEN for o in done)
    assert sum(isinstance(o, Stored) for o in done) == len(distinct)
