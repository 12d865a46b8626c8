"""The write policy of the store, without a reactor or an HTTP request.

An :class:`~stor.store.upload.Upload` is driven as the HTTP layer drives it
(chunks in, then ``finish``) over real directories; the disk pool is a
synchronous or a hand-stepped stand-in (``store_fakes``).  Failing members
fail for real: a regular file where a directory must go, a full tmpfs.
"""

import os
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from support.helpers import dat_files, temp_files
from support.store_fakes import Connection, ManualPool, make_store, roomiest_first, sha256
from stor.core import layout
from stor.core.errors import HashMismatch, NoSpace, StorageFailure, TooLarge
from stor.core.results import Duplicate, Stored
from stor.store.upload import HIGH_WATER


def result(d: "Deferred[object]") -> object:
    """The outcome of a Deferred that has fired (raise its failure)."""
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()  # type: ignore[union-attr]
    return out[0]


def upload(store, data: bytes, sha: str | None = None, length: int | None = -1,
           chunk: int = 65536) -> object:
    """Send ``data`` as one POST body and return the outcome."""
    up = store.upload(sha or sha256(data), len(data) if length == -1 else length)
    up.registerProducer(Connection(), True)
    for i in range(0, len(data), chunk):
        up.write(data[i:i + chunk])
    return result(Deferred.fromCoroutine(up.finish()))


@pytest.fixture
def store(storage_dirs, tmp_path):
    return make_store(storage_dirs, str(tmp_path / "locks"))


def everything(storage_dirs) -> list[str]:
    return dat_files(Path(storage_dirs[0][0]).parent)


def test_a_body_lands_on_both_members_of_one_pair(store, storage_dirs):
    data = os.urandom(300_000)
    outcome = upload(store, data)
    assert isinstance(outcome, Stored)
    assert sorted(outcome.paths) == everything(storage_dirs)
    assert tuple(layout.storage_of(p, sha256(data)) for p in outcome.paths) in (
        tuple(storage_dirs[0]), tuple(storage_dirs[1]))
    assert all(Path(p).read_bytes() == data for p in outcome.paths)
    assert temp_files(storage_dirs) == []


def test_a_body_without_a_declared_length_is_stored_too(store, storage_dirs):
    data = os.urandom(200_000)
    outcome = upload(store, data, length=None)
    assert isinstance(outcome, Stored) and len(outcome.paths) == 2


def test_a_file_on_both_members_is_a_duplicate_told_before_the_body(store, storage_dirs):
    data = b"stored before"
    first = upload(store, data)
    up = store.upload(sha256(data), len(data))
    early = result(Deferred.fromCoroutine(up.screen()))
    assert isinstance(early, Duplicate) and sorted(early.paths) == sorted(first.paths)


def test_a_lone_replica_is_not_a_duplicate(store, storage_dirs):
    data = b"half there"
    lone = Path(layout.file_path(storage_dirs[1][0], sha256(data)))
    lone.parent.mkdir(parents=True)
    lone.write_bytes(data)
    outcome = upload(store, data)
    assert isinstance(outcome, Stored)
    assert len(everything(storage_dirs)) in (2, 3)  # a pair, plus the lone one unless reused


def test_a_body_not_matching_its_sha_keeps_nothing(store, storage_dirs):
    with pytest.raises(HashMismatch) as info:
        upload(store, b"some bytes", sha="0" * 64)
    assert info.value.actual == sha256(b"some bytes")
    assert everything(storage_dirs) == [] and temp_files(storage_dirs) == []


def test_too_large_is_refused_by_declared_length_and_by_bytes_received(storage_dirs, tmp_path):
    store = make_store(storage_dirs, str(tmp_path / "locks"), max_upload_size=1000)
    up = store.upload("ab" * 32, 1001)
    with pytest.raises(TooLarge):
        result(Deferred.fromCoroutine(up.screen()))
    with pytest.raises(TooLarge):
        upload(store, b"x" * 5000, sha="ab" * 32, length=None)
    assert temp_files(storage_dirs) == []


def test_a_fast_sender_is_paused_and_memory_stays_bounded(storage_dirs, tmp_path):
    pool = ManualPool()
    store = make_store(storage_dirs, str(tmp_path / "locks"), pool=pool)
    chunk = os.urandom(64 * 1024)
    data = chunk * 200
    up = store.upload(sha256(data), len(data))
    connection = Connection()
    up.registerProducer(connection, True)
    pool.step()  # the duplicate check and the pair choice
    accepted_while_paused = 0
    for _ in range(200):
        up.write(chunk)  # a sender that never waits: the worst case for memory
        if connection.events[-1:] == ["pause"]:
            accepted_while_paused += len(chunk)
            assert accepted_while_paused <= HIGH_WATER + len(chunk)
            pool.drain()  # the disk catches up
            assert connection.events[-1] == "resume"
            accepted_while_paused = 0
    finished = Deferred.fromCoroutine(up.finish())
    pool.drain()
    outcome = result(finished)
    assert isinstance(outcome, Stored)
    assert "pause" in connection.events
    assert connection.events.count("pause") == connection.events.count("resume")
    assert all(Path(p).stat().st_size == len(data) for p in outcome.paths)


def test_concurrent_uploads_of_one_file_store_one_pair_and_all_succeed(store, storage_dirs):
    data = os.urandom(100_000)
    ups = [store.upload(sha256(data), len(data)) for _ in range(5)]  # all prepared: no file yet
    for up in ups:
        up.write(data)
    outcomes = [result(Deferred.fromCoroutine(up.finish())) for up in ups]
    assert [type(o) for o in outcomes] == [Stored] + [Duplicate] * 4
    assert len(everything(storage_dirs)) == 2
    assert all(os.path.exists(p) for o in outcomes for p in o.paths)
    assert temp_files(storage_dirs) == []


def test_a_member_failing_at_commit_moves_the_file_to_the_next_pair(storage_dirs, tmp_path):
    # pair 0 is the roomiest, but its second member has a file where the AA directory goes
    sizes = {storage_dirs[0][0]: 900, storage_dirs[0][1]: 900,
             storage_dirs[1][0]: 800, storage_dirs[1][1]: 800}
    store = make_store(storage_dirs, str(tmp_path / "locks"), health=roomiest_first(
        {k: v * 1_000_000 for k, v in sizes.items()}))
    data = os.urandom(200_000)
    blocker = Path(storage_dirs[0][1]) / sha256(data).upper()[:2]
    blocker.write_text("not a directory")
    outcome = upload(store, data)
    assert isinstance(outcome, Stored)
    assert [layout.storage_of(p, sha256(data)) for p in outcome.paths] == storage_dirs[1]
    assert [f.storage for f in outcome.failures] == [storage_dirs[0][1]]
    assert all(Path(p).read_bytes() == data for p in outcome.paths)
    assert dat_files(storage_dirs[0][0]) == []  # nothing left behind on the failed pair
    assert temp_files(storage_dirs) == []


@pytest.mark.acceptance('fault')
def test_a_member_filling_up_mid_body_moves_the_file_to_the_next_pair(tiny_disk, storage_dirs,
                                                                      tmp_path):
    full = tiny_disk / "full"
    full.mkdir()
    pairs = [[storage_dirs[0][0], str(full)], storage_dirs[1]]
    sizes = {pairs[0][0]: 900, pairs[0][1]: 900, pairs[1][0]: 800, pairs[1][1]: 800}
    store = make_store(pairs, str(tmp_path / "locks"), health=roomiest_first(
        {k: v * 1_000_000 for k, v in sizes.items()}))
    data = os.urandom(3 * 1024 * 1024)  # no declared length: nothing reserved up front
    outcome = upload(store, data, length=None)
    assert isinstance(outcome, Stored)
    assert [layout.storage_of(p, sha256(data)) for p in outcome.paths] == storage_dirs[1]
    assert "No space left" in str(outcome.failures[0])
    assert dat_files(storage_dirs[0][0]) == [] and temp_files(pairs) == []


def test_when_every_pair_fails_the_answer_names_the_storages(store, storage_dirs):
    data = os.urandom(1000)
    for pair in storage_dirs:
        Path(pair[1], sha256(data).upper()[:2]).write_text("not a directory")
    with pytest.raises(StorageFailure) as info:
        upload(store, data)
    assert not isinstance(info.value, NoSpace)
    assert all(pair[1] in str(info.value) for pair in storage_dirs)
    assert everything(storage_dirs) == [] and temp_files(storage_dirs) == []


@pytest.mark.acceptance('fault')
def test_a_pair_that_cannot_reserve_the_space_is_skipped(tiny_disk, storage_dirs, tmp_path):
    small = tiny_disk / "small"
    small.mkdir()
    pairs = [[storage_dirs[0][0], str(small)], storage_dirs[1]]
    sizes = {pairs[0][0]: 900, pairs[0][1]: 900, pairs[1][0]: 800, pairs[1][1]: 800}
    store = make_store(pairs, str(tmp_path / "locks"), health=roomiest_first(
        {k: v * 1_000_000 for k, v in sizes.items()}))
    data = os.urandom(2 * 1024 * 1024)  # more than the 1 MiB disk: fallocate refuses it
    outcome = upload(store, data)
    assert [layout.storage_of(p, sha256(data)) for p in outcome.paths] == storage_dirs[1]
    assert os.listdir(small) in ([], [".stor-tmp"])


@pytest.mark.acceptance('fault')
def test_no_pair_with_room_is_no_space(tiny_disk, tmp_path):
    a, b = tiny_disk / "a", tiny_disk / "b"
    a.mkdir(), b.mkdir()
    store = make_store([[str(a), str(b)]], str(tmp_path / "locks"))
    with pytest.raises(NoSpace):
        upload(store, os.urandom(2 * 1024 * 1024))
