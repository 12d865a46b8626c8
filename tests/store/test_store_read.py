"""The read policy of the store, without a reactor or an HTTP request.

:meth:`Store.read` over real directories, the disk pool run synchronously
(``store_fakes.SyncPool``), a consumer that keeps the bytes: where a file is
found, what is verified, what happens to a corrupt replica, which metrics
an operator sees.
"""

import os
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred, succeed

from support.helpers import dat_files
from support.store_fakes import Collect, RecordingMetrics, make_store, sha256
from stor.core import layout
from stor.core.errors import CorruptReplica, NotFound, RangeNotSatisfiable
from stor.core.ranges import ByteRange, Selection, etag
from stor.disk.local import SMALL_FILE
from support.helpers import flip


def result(d: "Deferred[object]") -> object:
    out: list[object] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()  # type: ignore[union-attr]
    return out[0]


def place(storage: str, data: bytes, sha: str | None = None) -> Path:
    path = Path(layout.file_path(storage, sha or sha256(data)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def read(store, selection: Selection) -> tuple[object, bytes]:
    """(the reading, the bytes a client would receive) for ``selection``."""
    reading = result(store.read(selection, selection.sha))
    consumer = Collect()
    result(reading.send(consumer))
    return reading, consumer.data


class FakeCache:
    """A lookup cache that remembers what it is told."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def get(self, sha: str) -> "Deferred[str | None]":
        return succeed(self.paths.get(sha))

    def peek(self, sha: str) -> str | None:
        return self.paths.get(sha)

    def put(self, sha: str, path: str) -> None:
        self.paths[sha] = path

    def drop(self, sha: str) -> None:
        self.paths.pop(sha, None)


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def store(storage_dirs, tmp_path, metrics):
    return make_store(storage_dirs, str(tmp_path / "locks"), metrics=metrics, cache=FakeCache())


@pytest.mark.parametrize("size", [0, 100, SMALL_FILE + 1, 3 * 1024 * 1024])
def test_a_stored_file_is_read_whole_and_counted(store, storage_dirs, metrics, size):
    data = os.urandom(size)
    place(storage_dirs[1][0], data)
    place(storage_dirs[1][1], data)
    reading, body = read(store, Selection(sha256(data)))
    assert body == data and reading.part.status == 200 and reading.size == size
    servers = {layout.server_name(s) for s in storage_dirs[1]}
    assert sum(metrics.counts[f"success.get.ok_old.{s}.count"] for s in servers) == 1
    assert sum(metrics.counts[f"success.get.ok_old.{s}.size"] for s in servers) == size
    assert metrics.counts["cache.miss"] == 1


def test_nothing_anywhere_is_not_found(store, metrics):
    with pytest.raises(NotFound):
        read(store, Selection("ab" * 32))
    assert metrics.counts["error.get.not_found_old.count"] == 1
    assert metrics.counts["lookup.attempt.4.count"] == 1  # every storage was looked at


def test_a_second_read_takes_the_cached_path(store, storage_dirs, metrics):
    data = b"cached"
    place(storage_dirs[0][0], data)
    place(storage_dirs[0][1], data)
    read(store, Selection(sha256(data)))
    read(store, Selection(sha256(data)))
    assert metrics.counts["cache.miss"] == 1 and metrics.counts["cache.hit"] == 1
    assert metrics.timings["lookup.time"] == 1


def test_a_missing_twin_is_brought_back_on_a_cache_hit_too(store, storage_dirs, metrics):
    data = os.urandom(5000)
    a, b = place(storage_dirs[0][0], data), place(storage_dirs[0][1], data)
    read(store, Selection(sha256(data)))  # now cached
    for gone in (a, b):
        gone.unlink()
        _, body = read(store, Selection(sha256(data)))
        assert body == data
        assert gone.read_bytes() == data  # repaired (the pool ran it at once)
    assert metrics.counts["repair.done.count"] == 2


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024], ids=["small", "large"])
def test_a_corrupt_replica_is_never_served_whole_and_goes_to_quarantine(
        store, storage_dirs, metrics, size):
    data = os.urandom(size)
    a, b = place(storage_dirs[0][0], data), place(storage_dirs[0][1], data)
    flip(a, size - 1)
    flip(b, 0)  # both rotten: nothing good to serve
    sha = sha256(data)
    for _ in range(2):
        try:
            _, body = read(store, Selection(sha))
        except (CorruptReplica, NotFound):
            continue
        assert body != data[:len(body)] or len(body) < size
        assert len(body) < size  # cut before its end: never a whole wrong file
    assert metrics.counts["error.get.corrupt_replica.count"] == 2
    quarantined = [p for s in storage_dirs[0] for p in Path(s, ".stor-quarantine").iterdir()]
    assert len(quarantined) == 2
    with pytest.raises(NotFound):
        read(store, Selection(sha))


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024], ids=["small", "large"])
def test_a_corrupt_replica_is_replaced_from_its_good_twin(store, storage_dirs, metrics, size):
    data = os.urandom(size)
    sha = sha256(data)
    a, b = place(storage_dirs[0][0], data), place(storage_dirs[0][1], data)
    flip(a, size // 2)
    served = []
    for _ in range(3):
        try:
            served.append(read(store, Selection(sha))[1])
        except CorruptReplica:
            served.append(None)  # a large one is cut mid-stream; the next read is good
    assert served[-1] == data and all(s in (None, data) for s in served)
    assert a.read_bytes() == data and b.read_bytes() == data  # repaired from the twin
    assert len(list(Path(storage_dirs[0][0], ".stor-quarantine").iterdir())) == 1
    assert metrics.counts["repair.quarantined.count"] == 1


def test_a_range_is_sent_but_not_verified(store, storage_dirs):
    data = os.urandom(3 * 1024 * 1024)
    place(storage_dirs[0][0], data)
    reading, body = read(store, Selection(sha256(data), range=b"bytes=10-19"))
    assert reading.part.status == 206 and reading.part.range == ByteRange(10, 19, len(data))
    assert body == data[10:20]


def test_not_modified_and_head_send_no_body(store, storage_dirs):
    data = b"validators"
    place(storage_dirs[0][0], data)
    reading, body = read(store, Selection(sha256(data), if_none_match=etag(sha256(data))))
    assert reading.part.status == 304 and body == b""
    reading, body = read(store, Selection(sha256(data), head=True))
    assert reading.part.status == 200 and reading.size == len(data) and body == b""


def test_a_range_past_the_end_is_unsatisfiable(store, storage_dirs):
    data = b"short"
    place(storage_dirs[0][0], data)
    with pytest.raises(RangeNotSatisfiable):
        read(store, Selection(sha256(data), range=b"bytes=100-"))


class FakeS3:
    """An S3 tier holding some objects (the same interface as the real reader)."""

    class Object:
        def __init__(self, data: bytes) -> None:
            self.size, self.last_modified, self._data = len(data), b"Mon, 01 Jan 2024", data

        def write_to(self, consumer) -> "Deferred[None]":
            consumer.write(self._data)
            return succeed(None)

        def discard(self) -> None:
            pass

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.asked: list[str] = []

    def fetch(self, sha: str, head: bool, byte_range: object = None) -> "Deferred[object]":
        self.asked.append(sha)
        data = self.objects.get(sha)
        return succeed(None if data is None else self.Object(data))


def test_s3_first_serves_from_the_bucket_before_the_disks(storage_dirs, tmp_path, metrics):
    data = b"in both"
    place(storage_dirs[0][0], data)
    s3 = FakeS3({sha256(data): data})
    store = make_store(storage_dirs, str(tmp_path / "locks"), metrics=metrics, s3=s3)
    reading, body = read(store, Selection(sha256(data)))
    assert body == data and reading.last_modified == b"Mon, 01 Jan 2024"
    assert metrics.counts["success.get.ok_hcp.count"] == 1


def test_s3_fallback_asks_the_bucket_only_on_a_local_miss(storage_dirs, tmp_path, metrics):
    local, remote = b"local", b"remote only"
    place(storage_dirs[0][0], local)
    s3 = FakeS3({sha256(remote): remote, sha256(local): local})
    store = make_store(storage_dirs, str(tmp_path / "locks"), metrics=metrics, s3=s3,
                       s3_first=False)
    assert read(store, Selection(sha256(local)))[1] == local
    assert s3.asked == []
    assert read(store, Selection(sha256(remote)))[1] == remote
    assert s3.asked == [sha256(remote)]
    assert not any(sha256(remote).upper() in f  # served, not kept (no s3_fill_local)
                   for f in dat_files(Path(storage_dirs[0][0]).parent))
