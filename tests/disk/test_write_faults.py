"""Issue 18, cases 12 and 13: disk faults under uploads, through the FUSE fault layer.

Case 12: both members of the pair an upload is written to fail mid-upload (EIO on
write, EIO on fsync, ENOSPC on write) while the other pair is healthy.  A body up
to 4 MiB is handed on to the other pair (201 there, both replicas exact); a larger
one answers a retryable 503 with ``Retry-After``, and its retry lands on the other
pair.  Either way the failed storages leave placement until their probe passes,
and once the fault clears uploads land on the pair again.

Case 13: ``statfs`` failing.  On every pair: ``/status``, ``/health/ready`` and
``/health/write`` fail at once (not at the next periodic probe), the gauges and
the JSON probe field say so, each storage's fall is logged once with its reason,
and an upload is a storage fault (500), not "Not enough space" (507).  On one
pair: uploads go to the other.  Cleared: back.

Placement is made deterministic: pair A (the faulty one, two faultfs mounts) sits
on a 512 MiB tmpfs and pair B on a 256 MiB one, and ``balance_threshold`` is above
both, so the roomiest placeable pair, A, takes every file it can.
"""

import hashlib
import http.client
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, Answer, request, wait_for
from stor.disk.local import PLACEMENT_TTL

pytestmark = pytest.mark.acceptance("stor-process", "fault", "fault-fs")

SMALL = 256 * 1024
"""Kept and handed on (at most 4 MiB: stor.store.upload.HAND_ON_MAX)."""
LARGE = 6 * 1024 * 1024
"""Not kept: a 503 the client retries."""
SLOW_PROBE = 60
"""Seconds between two periodic probes: the faults are met by uploads, not by the probe."""


@pytest.fixture
def tmpfs(tmp_path: Path):
    made: list[Path] = []

    def mount(name: str, size: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       check=True)
        made.append(d)
        return d

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    yield mount
    for d in reversed(made):
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.fixture
def pairs(tmpfs, faultfs):
    """(the two faultfs mounts of pair A, the two plain storages of pair B)."""
    big, small = tmpfs("big", "512m"), tmpfs("small", "256m")
    a = []
    for name in ("a1", "a2"):
        (big / name).mkdir()
        a.append(faultfs(backing=big / name))
    b = []
    for name in ("b1", "b2"):
        (small / name).mkdir()
        b.append(str(small / name))
    return a, b


def _start(stor_process, a, b, **config):
    """stor on pairs A and B, once its first probe of every storage has passed (a fault
    set before it would be met by the probe instead of an upload)."""
    a_paths = [str(fs.mountpoint) for fs in a]
    stor = stor_process(storage_pairs=[a_paths, b], balance_threshold=10**15,
                        write_headroom=16 * 1024 * 1024, **config)
    wait_for(lambda: _probed_up(stor.port, a_paths + b), "the first probes", stor)
    return stor


def _post(port: int, body: bytes) -> Answer:
    sha = hashlib.sha256(body).hexdigest()
    return request(port, "POST", f"/{sha}", body, {"Authorization": AUTH_HEADER}, timeout=60)


def _stored_on(answer: Answer, storages: list[str], body: bytes, stor=None) -> list[str]:
    """The paths of a 201, after checking they are on ``storages`` and hold ``body``."""
    assert answer.status == 201, (answer.status, answer.headers.get("stor-reason"), answer.body,
                                  stor.describe() if stor is not None else "")
    paths = json.loads(answer.body)
    assert sorted(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(p))))
                  for p in paths) == sorted(storages), paths
    for p in paths:
        assert Path(p).read_bytes() == body
    return paths


def _nothing_of(body: bytes, storages: list[str]) -> None:
    """No replica and no temp file of ``body`` on any of ``storages``."""
    sha = hashlib.sha256(body).hexdigest()
    for s in storages:
        found = [str(p) for p in Path(s).rglob(f"{sha.upper()}.dat")]
        found += [str(p) for p in Path(s, ".stor-tmp").glob(f"{sha}*")]
        assert found == [], found


def _storages(port: int) -> dict[str, dict]:
    answer = request(port, "GET", "/status", headers={"Accept": "application/json"})
    return {s["path"]: s for s in json.loads(answer.body)["storages"]}


def _probed_up(port: int, storages: list[str]) -> bool:
    seen = _storages(port)
    return all(seen[s]["ok"] and seen[s]["probe"] and seen[s]["probe"]["ok"]
               and seen[s]["probe"]["kind"] == "write" for s in storages)


def _fault(a, op: str, errno: str) -> None:
    for fs in a:
        fs.fail(op, errno=errno)


def _cleared(stor, a, a_paths: list[str]) -> None:
    """Clear the faults; once the probe passes, uploads land on pair A again."""
    for fs in a:
        fs.clear()
    wait_for(lambda: _probed_up(stor.port, a_paths), "pair A probed up again", stor)
    body = os.urandom(1000)
    _stored_on(_post(stor.port, body), a_paths, body)


@pytest.mark.parametrize("op, errno", [("write", "EIO"), ("fsync", "EIO"), ("write", "ENOSPC")])
def test_a_pair_failing_whole_mid_upload_hands_on_or_answers_503(stor_process, pairs, op, errno):
    a, b = pairs
    a_paths = [str(fs.mountpoint) for fs in a]
    stor = _start(stor_process, a, b, probe_period=SLOW_PROBE)
    body = os.urandom(1000)
    _stored_on(_post(stor.port, body), a_paths, body)  # the roomiest pair takes it

    # a small body: kept, handed on to pair B before any answer
    _fault(a, op, errno)
    small = os.urandom(SMALL)
    _stored_on(_post(stor.port, small), b, small, stor)
    for fs in a:
        fs.wait_event("fail", op)  # the upload met the fault on both members
    _nothing_of(small, a_paths)
    seen = _storages(stor.port)
    for s in a_paths:  # out of placement until its probe passes, and /status says why
        assert seen[s]["ok"] is False and seen[s]["writable"] is True, seen[s]
        assert seen[s]["probe"]["ok"] is False, seen[s]
    # pair B takes files: write-ready; pair A is a pair with no healthy member (SPEC §9)
    assert request(stor.port, "GET", "/health/write").status == 200
    ready = request(stor.port, "GET", "/health/ready")
    assert ready.status == 503 and b"no usable member" in ready.body, ready
    again = os.urandom(SMALL)
    _stored_on(_post(stor.port, again), b, again)  # not even tried on A
    metrics = request(stor.port, "GET", "/metrics").body.decode()
    for s in a_paths:
        assert f'stor_storage_up{{storage="{s}"}} 0.0' in metrics
        wait_for(lambda s=s: f"storage {s} is down" in stor.out, f"{s} logged down", stor)
    _cleared(stor, a, a_paths)

    # a large body: not kept; 503 + Retry-After, and the retry lands on pair B
    _fault(a, op, errno)
    large = os.urandom(LARGE)
    refused = _post(stor.port, large)
    assert refused.status == 503, refused
    assert refused.headers["retry-after"] == "1"
    assert refused.body == b"Storage failed during the upload: try again\n"
    assert "another pair can take it" in refused.headers["stor-reason"]
    _nothing_of(large, a_paths + b)
    _stored_on(_post(stor.port, large), b, large)
    _cleared(stor, a, a_paths)

    for s in a_paths:  # each fall and each return logged once
        assert stor.out.count(f"storage {s} is down") == 2, stor.out
        wait_for(lambda s=s: stor.out.count(f"storage {s} is up again") == 2,
                 f"{s} logged up twice", stor)


def _post_chunked(port: int, body: bytes) -> Answer:
    """An upload without ``Content-Length``: chunked, 64 KiB a chunk."""
    sha = hashlib.sha256(body).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", f"/{sha}", body=chunks, encode_chunked=True,
                     headers={"Authorization": AUTH_HEADER, "Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        conn.close()


def test_a_chunked_upload_is_kept_while_it_fits(stor_process, pairs):
    """Without a length, the body is kept until it outgrows 4 MiB."""
    a, b = pairs
    a_paths = [str(fs.mountpoint) for fs in a]
    stor = _start(stor_process, a, b, probe_period=SLOW_PROBE)
    _fault(a, "write", "EIO")
    small = os.urandom(SMALL)
    _stored_on(_post_chunked(stor.port, small), b, small, stor)
    _cleared(stor, a, a_paths)

    _fault(a, "fsync", "EIO")
    large = os.urandom(LARGE)
    refused = _post_chunked(stor.port, large)
    assert refused.status == 503, refused
    assert refused.headers["retry-after"] == "1"
    _nothing_of(large, a_paths + b)
    _stored_on(_post_chunked(stor.port, large), b, large, stor)
    _cleared(stor, a, a_paths)


def test_statfs_failing_on_every_pair_fails_health_at_once(stor_process, faultfs):
    fss = [faultfs() for _ in range(4)]
    paths = [str(fs.mountpoint) for fs in fss]
    stor = stor_process(storage_pairs=[paths[:2], paths[2:]], probe_period=SLOW_PROBE)
    wait_for(lambda: _probed_up(stor.port, paths), "the first probes", stor)
    kept = os.urandom(5000)
    stored = _post(stor.port, kept)
    assert stored.status == 201, stored
    assert request(stor.port, "GET", "/health/ready").status == 200

    for fs in fss:
        fs.fail("statfs")
    status = request(stor.port, "GET", "/status")
    assert status.status == 503, status
    for s in paths:
        assert f"{s}: statfs failed: Input/output error\n".encode() in status.body, status
    ready = request(stor.port, "GET", "/health/ready")
    assert ready.status == 503, ready
    assert b"no writable pair has both members usable" in ready.body
    write = request(stor.port, "GET", "/health/write")
    assert write.status == 503, write
    assert b"statfs failed" in write.body
    seen = _storages(stor.port)
    for s in paths:
        assert seen[s]["ok"] is False and seen[s]["free_bytes"] is None, seen[s]
        assert seen[s]["reason"] == "statfs failed: Input/output error"
        assert seen[s]["probe"]["ok"] is False, seen[s]  # the storage's probe field says so
    metrics = request(stor.port, "GET", "/metrics").body.decode()
    for s in paths:
        assert f'stor_storage_up{{storage="{s}"}} 0.0' in metrics

    body = os.urandom(5000)
    refused = _post(stor.port, body)
    assert refused.status == 500, refused  # a storage fault, not "Not enough space" (507)
    assert "no writable pair is healthy" in refused.headers["stor-reason"]
    assert "statfs failed" in refused.headers["stor-reason"]
    _nothing_of(body, paths)
    got = request(stor.port, "GET", f"/{hashlib.sha256(kept).hexdigest()}")
    assert (got.status, got.body) == (200, kept)  # reads go on

    for s in paths:
        wait_for(lambda s=s: f"storage {s} is down: statfs failed: Input/output error"
                 in stor.out, f"{s} logged down", stor)
    for fs in fss:
        fs.clear()
    wait_for(lambda: _probed_up(stor.port, paths), "every storage probed up", stor)
    assert request(stor.port, "GET", "/health/ready").status == 200
    assert request(stor.port, "GET", "/health/write").status == 200
    stored = _post(stor.port, body)
    assert stored.status == 201, stored
    for s in paths:  # one line down, one up, however many checks saw it
        assert stor.out.count(f"storage {s} is down") == 1, stor.out
        wait_for(lambda s=s: stor.out.count(f"storage {s} is up again") == 1,
                 f"{s} logged up", stor)


def test_statfs_failing_on_one_pair_sends_uploads_to_the_other(stor_process, pairs):
    a, b = pairs
    a_paths = [str(fs.mountpoint) for fs in a]
    stor = _start(stor_process, a, b, probe_period=SLOW_PROBE)
    body = os.urandom(1000)
    _stored_on(_post(stor.port, body), a_paths, body)

    a[0].fail("statfs")  # one member is enough: the pair cannot take a file
    # a small upload is placed from a health answer up to PLACEMENT_TTL old: until that
    # one is replaced, a file may still go (whole, durably) to pair A; after, none does
    deadline = time.monotonic() + PLACEMENT_TTL + 10
    while True:
        body = os.urandom(2000)
        answer = _post(stor.port, body)
        assert answer.status == 201, answer
        paths = json.loads(answer.body)
        assert all(Path(p).read_bytes() == body for p in paths)
        if all(any(p.startswith(s + "/") for s in b) for p in paths):
            break
        assert time.monotonic() < deadline, "pair A kept taking files"
    for i in range(3):
        body = os.urandom(2000 + i)
        _stored_on(_post(stor.port, body), b, body)
    assert request(stor.port, "GET", "/health/ready").status == 200
    status = request(stor.port, "GET", "/status")
    assert status.status == 503
    assert status.body == f"{a_paths[0]}: statfs failed: Input/output error\n".encode()
    _cleared(stor, a, a_paths)
