"""The durable S3 outbox against moto (signatures checked; objects read back
and hashed), through a TCP relay the tests cut and restore for outages."""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet import reactor

from support.amqp import Relay, eventually
from support.s3 import black_hole
from support.s3write import MiB, bounded, make_file, place_big, s3_config, stored_sha
from stor.config import StatsiteConfig
from stor.core import layout
from stor.config import Config
from stor.observe.statsd import build_metrics
from stor.s3.outbox import (
    BUSY, DEPTH, PUT_OK, PUT_PRESENT, Claim, Outbox, claim, marker_path, record, release, scan,
)


class RecordingMetrics:
    """A Metrics that remembers what it was told."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.gauges: dict[str, float] = {}

    def incr(self, key: str, value: int = 1) -> None:
        self.counts[key] += value

    def timing(self, key: str, ms: float) -> None:
        pass

    def gauge(self, key: str, value: float) -> None:
        self.gauges[key] = value


@pytest.fixture
def pair(tmp_path: Path) -> list[str]:
    members = [str(tmp_path / "a"), str(tmp_path / "b")]
    for m in members:
        os.mkdir(m)
    return members


def commit(pair: list[str], data: bytes) -> str:
    """What an upload does: the file on both members, then the outbox markers."""
    for storage in pair:
        sha, _ = make_file(storage, data)
    record(sha, pair)
    return sha


def markers(pair: list[str]) -> list[str]:
    return sorted(name for s in pair if os.path.isdir(d := os.path.join(s, ".stor-outbox"))
                  for name in os.listdir(d))


@pytest_twisted.async_yield_fixture
async def make_outbox(make_writer: Any, disk_pool: Any):
    """Start Outboxes (quick backoff); every one still running is stopped afterwards."""
    started: list[Outbox] = []

    def make(storages: list[str], config: Any, metrics: Any = None, **kw: Any) -> Outbox:
        writer_kw = {k: kw.pop(k) for k in ("multipart_threshold", "part_size") if k in kw}
        settings: dict[str, Any] = dict(concurrency=2, min_backoff=0.05, max_backoff=0.3,
                                        rescan_interval=3600.0)
        settings.update(kw)
        outbox = Outbox(storages, make_writer(config, **writer_kw), reactor, disk_pool.run,
                        metrics or RecordingMetrics(), **settings)
        outbox.startService()
        started.append(outbox)
        return outbox

    yield make
    for outbox in started:
        if outbox.running:
            await outbox.stopService()


async def drained(outbox: Outbox, timeout: float = 20.0) -> None:
    await eventually(lambda: outbox.state()["scanned"] and outbox.state()["depth"] == 0,
                     reactor, timeout,
                     what=f"an empty outbox ({outbox.state()})")


# -- markers on disk ---------------------------------------------------------


def test_record_leaves_a_marker_on_both_members(pair):
    sha = "AB" * 32
    written = record(sha, pair)
    assert written == [marker_path(s, sha) for s in pair]
    assert all(os.path.isfile(p) for p in written)
    assert marker_path(pair[0], sha).endswith(f".stor-outbox/{sha.lower()}")


@pytest.mark.acceptance('process')
def test_record_returns_only_once_each_outbox_directory_is_fsynced_after_its_marker(
        pair, tmp_path):
    """The marker is what brings a file to S3 after a power cut: each member's outbox
    directory must be fsynced after the marker appeared in it (strace of a real call)."""
    sha = "ab" * 32
    trace = tmp_path / "strace.out"
    code = f"from stor.s3.outbox import record; print(record({sha!r}, {pair!r}))"
    subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(trace), "-e", "trace=openat,fsync",
                    sys.executable, "-c", code], check=True, capture_output=True)
    lines = trace.read_text().splitlines()
    for storage in pair:
        outbox = os.path.realpath(os.path.join(storage, ".stor-outbox"))
        created = [i for i, line in enumerate(lines)
                   if f'"{os.path.join(storage, ".stor-outbox", sha)}"' in line
                   and "O_CREAT" in line and "= -1" not in line]
        assert created, f"no marker was created on {storage}"
        assert any("fsync(" in line and f"<{outbox}>" in line and line.endswith("= 0")
                   for line in lines[created[0]:]), f"{outbox} not fsynced after its marker"


@pytest.mark.acceptance('fault')
def test_record_survives_one_unwritable_member(pair, readonly_dir):
    written = record("cd" * 32, [str(readonly_dir), pair[1]])
    assert written == [marker_path(pair[1], "cd" * 32)]


@pytest.mark.acceptance('fault')
def test_record_fails_when_no_member_can_be_written(readonly_dir):
    with pytest.raises(OSError):
        record("cd" * 32, [str(readonly_dir)])


def test_scan_finds_each_sha_once_with_its_oldest_marker(pair):
    record("01" * 32, pair[:1])
    old = time.time() - 3600
    os.utime(marker_path(pair[0], "01" * 32), (old, old))
    record("01" * 32, pair[1:])
    record("02" * 32, pair)
    open(os.path.join(pair[0], ".stor-outbox", "not-a-sha"), "w").close()
    found = scan(pair + ["/nonexistent/storage"])
    assert sorted(found) == ["01" * 32, "02" * 32]
    assert found["01" * 32] == pytest.approx(old, abs=1)


def test_a_claimed_sha_is_busy_for_everyone_else(pair):
    sha = "ef" * 32
    record(sha, pair)
    first = claim(sha, pair)
    assert isinstance(first, Claim)
    assert claim(sha, pair) == BUSY
    assert release(first, pair, None) is False
    second = claim(sha, pair)
    assert isinstance(second, Claim)
    assert release(second, pair, "stored") is True
    assert markers(pair) == []
    assert claim(sha, pair) is None


def test_markers_of_a_file_gone_are_kept_if_it_is_stored_again_meanwhile(pair):
    sha = "9a" * 32
    record(sha, pair)
    owned = claim(sha, pair)
    make_file(pair[1], b"stored again", sha=sha)  # an upload after it was found gone
    assert release(owned, pair, "gone") is False
    assert markers(pair) == [sha, sha]
    os.unlink(layout.file_path(pair[1], sha))
    assert release(claim(sha, pair), pair, "gone") is True
    assert markers(pair) == []


# -- draining ------------------------------------------------------------------


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_markers_on_disk_are_drained_on_start(make_outbox, moto, bucket, pair):
    shas = [commit(pair, f"file {i}\n".encode() * 500) for i in range(5)]
    metrics = RecordingMetrics()
    outbox = make_outbox(pair, s3_config(moto, bucket), metrics)
    await drained(outbox)
    assert [stored_sha(moto, bucket, sha) for sha in shas] == shas
    assert markers(pair) == []
    assert metrics.counts[PUT_OK] == 5
    assert outbox.state()["puts"]["ok"] == 5


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_queued_file_is_put_by_the_running_outbox(make_outbox, moto, bucket, pair):
    outbox = make_outbox(pair, s3_config(moto, bucket))
    await drained(outbox)
    sha = commit(pair, b"recorded while running")
    outbox.queue(sha)
    assert outbox.state()["depth"] == 1
    await drained(outbox)
    assert stored_sha(moto, bucket, sha) == sha
    assert markers(pair) == []


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_an_object_already_in_the_bucket_is_not_sent_again(make_outbox, moto, bucket, pair):
    data = b"already there"
    sha = commit(pair, data)
    moto.put(bucket, f"{sha[:2]}/{sha[2:4]}/{sha[4:6]}/{sha}", data)
    metrics = RecordingMetrics()
    outbox = make_outbox(pair, s3_config(moto, bucket), metrics)
    await drained(outbox)
    assert (metrics.counts[PUT_PRESENT], metrics.counts[PUT_OK]) == (1, 0)
    assert markers(pair) == []


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_corrupt_replica_is_reported_and_its_twin_uploaded(make_outbox, moto, bucket,
                                                                   pair):
    data = b"good bytes " * 1000
    sha = commit(pair, data)
    rotten = make_file(pair[0], data[:-1] + b"!", sha=sha)[1]
    reported: list[str] = []
    outbox = make_outbox(pair, s3_config(moto, bucket), on_corrupt=reported.append)
    await drained(outbox)
    assert reported == [rotten]
    assert stored_sha(moto, bucket, sha) == sha
    assert outbox.state()["puts"]["corrupt"] == 1


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_sha_with_no_good_replica_waits_until_quarantined(make_outbox, moto, bucket,
                                                                  pair, tmp_path):
    data = b"lost bytes " * 1000
    sha = commit(pair, data)
    for storage in pair:
        make_file(storage, b"rot" + data[3:], sha=sha)
    reported: list[str] = []
    outbox = make_outbox(pair, s3_config(moto, bucket), on_corrupt=reported.append)

    def given_up() -> bool:
        error = outbox.state()["last_error"]
        return error is not None and "no good local replica" in error["message"]

    await eventually(given_up, reactor, 10, what="both replicas refused")
    assert sorted(set(reported)) == sorted(layout.file_path(s, sha) for s in pair)
    assert stored_sha(moto, bucket, sha) is None
    assert markers(pair) == [sha, sha]  # kept: tried again later
    for i, path in enumerate(sorted(set(reported))):  # what quarantine does
        os.rename(path, tmp_path / f"quarantined-{i}")
    await drained(outbox)
    assert markers(pair) == []  # nothing local left to upload
    assert stored_sha(moto, bucket, sha) is None
    assert outbox.state()["puts"]["dropped"] == 1


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_two_outboxes_on_the_same_disks_put_each_file_once(make_outbox, moto, bucket,
                                                                 pair):
    shas = [commit(pair, os.urandom(200_000)) for _ in range(12)]
    one, two = RecordingMetrics(), RecordingMetrics()
    first = make_outbox(pair, s3_config(moto, bucket), one)
    second = make_outbox(pair, s3_config(moto, bucket), two)
    await drained(first)
    await drained(second)
    assert one.counts[PUT_OK] + two.counts[PUT_OK] == 12
    assert [stored_sha(moto, bucket, sha) for sha in shas] == shas
    assert markers(pair) == []


# -- outages, restarts ---------------------------------------------------------


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_an_outage_and_a_restart_lose_no_upload(make_outbox, moto, bucket, pair):
    """Cut S3 off mid-way, restart stor while it is still off: every file lands."""
    relay = Relay(reactor, target=("127.0.0.1", int(moto.endpoint.rsplit(":", 1)[1])))
    await relay.start()
    try:
        config = s3_config(moto, bucket, endpoint=f"http://127.0.0.1:{relay.port}",
                           timeout=2.0, connect_timeout=1.0)
        shas = []
        for i in range(8):
            for storage in pair:
                sha = place_big(storage, 3 * MiB, seed=i)[0]
            record(sha, pair)
            shas.append(sha)
        first = make_outbox(pair, config, multipart_threshold=6 * MiB)
        await eventually(lambda: first.state()["puts"]["ok"] >= 1, reactor, 20,
                         what="a first upload")
        await relay.cut()  # uploads in flight are cut, new connections refused
        await eventually(lambda: first.state()["consecutive_failures"] >= 3, reactor, 20,
                         what="retries while S3 is down")
        assert first.state()["backing_off"] or first.state()["in_flight"]
        assert "cannot connect" in first.state()["last_error"]["message"]
        await bounded(first.stopService())  # stor restarts before S3 is back
        left = first.state()["depth"]
        assert 0 < left < 8
        assert len(markers(pair)) == 2 * left  # on disk, both members
        await relay.restore()
        second = make_outbox(pair, config)
        await drained(second)
        assert second.state()["puts"]["ok"] + second.state()["puts"]["present"] == left
    finally:
        await relay.stop()
    assert [stored_sha(moto, bucket, sha) for sha in shas] == shas
    assert markers(pair) == []


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_stop_waits_for_a_hung_upload_only_so_long(make_outbox, moto, pair):
    sha = commit(pair, b"never answered")
    with black_hole() as port:
        config = s3_config(moto, "b", endpoint=f"http://127.0.0.1:{port}", timeout=30.0)
        outbox = make_outbox(pair, config, stop_timeout=0.3)
        await eventually(lambda: outbox.state()["in_flight"] == 1, reactor, 5, what="a HEAD")
        start = time.monotonic()
        await bounded(outbox.stopService(), 5)
        assert time.monotonic() - start < 2.0
    assert markers(pair) == [sha, sha]


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_depth_and_puts_go_to_statsite(make_outbox, moto, bucket, pair, statsite):
    sha = commit(pair, b"counted")
    metrics, service = build_metrics(Config(storage_pairs=(pair,), statsite=StatsiteConfig(
        host="127.0.0.1", port=statsite.port, prefix="stor")), reactor)
    service.startService()
    try:
        def heard() -> bool:  # statsite's name resolves in a thread: probe until it has
            metrics.incr("probe")
            return any(line.startswith("stor.probe:") for line in statsite.lines)

        await eventually(heard, reactor, 5, what="statsite reachable")
        outbox = make_outbox(pair, s3_config(moto, bucket), metrics, gauge_interval=0.05)
        await drained(outbox)
        await statsite.wait_for(r"stor\.s3\.put\.ok:1\|c")
        await statsite.wait_for(r"stor\.s3\.outbox\.depth:0\|g")
    finally:
        await maybeDeferred(service.stopService)
    assert stored_sha(moto, bucket, sha) == sha
    assert DEPTH == "s3.outbox.depth"
