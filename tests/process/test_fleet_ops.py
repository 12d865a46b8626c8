"""A fleet behind the shipped conf/haproxy-fleet.cfg on a real S3 (Ceph RGW), as
docs/fleet-operations.rst describes it (issue 20):

- a host whose disks fill up leaves the upload pool before it refuses: no 507
  for uploads begun one check period after it fell below ``write_headroom``,
  and it keeps serving reads;
- a file stored while its SHA's host was out of the upload pool is read
  through the balancer even while that host cannot find it (its bucket lacks
  the file: 404, or its S3 is unknown: 503): the read is retried on the next
  host of the ring, the one the upload fell through to;
- a host that hangs (SIGSTOP) leaves both pools within a few seconds.

Hosts are real ``twistd stor`` processes; filling disks are real tmpfs mounts.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.fleet import Fleet, Host, s3_keys, wait_in_bucket
from support.harness import AUTH_HEADER, request, wait_for
from support.helpers import sha256
from support.ports import free_port, refused_port
from support.s3 import black_hole
from test_fleet import host_of

pytestmark = pytest.mark.acceptance('fault', 'haproxy', 'moto', 'process', 'stor-process')

KiB, MiB = 1024, 1024 * 1024
CHECK_PERIOD = 1.0 * 2 + 1.0  # inter 1s x fall 2, plus the last check's own timeout


def upload(port: int, data: bytes) -> tuple[int, list[str] | bytes]:
    answer = request(port, "POST", f"/{sha256(data)}", data, {"Authorization": AUTH_HEADER},
                     timeout=70)
    body = json.loads(answer.body) if answer.status in (200, 201) else answer.body
    return answer.status, body


def both_pools_up(lb: Any, names: list[str]) -> None:
    expected = {n: "UP" for n in names}
    wait_for(lambda: lb.servers("stor") == expected and lb.servers("stor_write") == expected,
             "every host up in both pools", timeout=30)


def mount_tmpfs(path: str, size: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)


@pytest.fixture
def tmpfs_mounts() -> Any:
    mounted: list[str] = []

    def mount(host: Host, size: int) -> None:
        if os.geteuid() != 0:
            pytest.skip("mounting a small filesystem needs root")
        for s in host.storages:
            mount_tmpfs(s, size)
            mounted.append(s)

    yield mount
    for s in reversed(mounted):
        subprocess.run(["umount", "-l", s], check=False)


def test_a_filling_host_leaves_the_upload_pool_and_no_upload_gets_507(
        fleet: Fleet, haproxy: Any, rgw: Any, tmpfs_mounts: Any) -> None:
    bucket = rgw.new_bucket()
    keys = s3_keys(rgw, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    full = fleet.start("a", write_headroom=3 * MiB, **keys)
    assert fleet.stop(full) == 0  # its disks become small ones (the others keep theirs)
    tmpfs_mounts(full, 6 * MiB)
    fleet.restart(full)
    hosts = [full, fleet.start("b", write_headroom=3 * MiB, **keys),
             fleet.start("c", write_headroom=3 * MiB, **keys)]
    lb = haproxy([h.port for h in hosts])
    both_pools_up(lb, ["stor1", "stor2", "stor3"])

    rng = random.Random(20)
    fell_below: float | None = None
    outcomes: list[tuple[float, int, str, bytes]] = []
    while fell_below is None or time.monotonic() < fell_below + CHECK_PERIOD + 5.0:
        assert fell_below is not None or len(outcomes) < 400, \
            "the small host never fell below its headroom"
        data = rng.randbytes(rng.randrange(KiB, MiB))
        began = time.monotonic()
        status, body = upload(lb.port, data)
        where = host_of(hosts, body).name if status in (200, 201) else "-"
        outcomes.append((began, status, where, data))
        if fell_below is None and request(full.port, "GET", "/health/write").status == 503:
            fell_below = time.monotonic()
    late = [(status, where) for began, status, where, _ in outcomes
            if began > fell_below + CHECK_PERIOD]
    assert len(late) >= 20
    assert Counter(s for s, _ in late) == {201: len(late)}, "uploads refused while others had room"
    assert "a" not in {where for _, where in late}
    # reads go on ("UP", or "UP 1/2" while one slow check on a busy machine is retried)
    assert lb.servers("stor")["stor1"].startswith("UP")
    for _, status, _, data in outcomes:  # every acknowledged file reads back exactly
        if status in (200, 201):
            answer = request(lb.port, "GET", f"/{sha256(data)}")
            assert (answer.status, answer.body == data) == (200, True)
    for _, status, _, data in outcomes[-5:]:
        assert wait_in_bucket(rgw, bucket, sha256(data)) == sha256(data)


@pytest.mark.parametrize("its_s3", ["behind", "hung"])
def test_a_file_stored_while_its_host_took_no_uploads_is_read_through_the_balancer(
        fleet: Fleet, haproxy: Any, rgw: Any, its_s3: str) -> None:
    """Host a takes no uploads (write_headroom larger than any disk).  The others
    store what hashes to it, but their outbox cannot reach the bucket (their S3
    refuses connections).  Host a, asked first for those files, does not have
    them, and its bucket lacks them (its S3 is behind, or hangs): it asks its
    ``fleet_peers``, and every read through the balancer gets the file.  Once
    the others reach the bucket (a graceful restart with S3 fixed), a serves
    the files itself."""
    bucket = rgw.new_bucket()
    good = s3_keys(rgw, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback",
                   s3_timeout=1, s3_connect_timeout=1)
    cut = {**good, "s3_credentials": {**good["s3_credentials"],
                                      "host": f"127.0.0.1:{refused_port()}"}}
    with black_hole() as hung:
        a_keys = good if its_s3 == "behind" else {
            **good, "s3_credentials": {**good["s3_credentials"], "host": f"127.0.0.1:{hung}"}}
        ports = {name: free_port() for name in "abc"}

        def peers(name: str) -> list[str]:
            return [f"http://127.0.0.1:{p}" for n, p in ports.items() if n != name]

        a = fleet.start("a", port=ports["a"], write_headroom=2 ** 60, fleet_peers=peers("a"),
                        **a_keys)
        others = [fleet.start(n, port=ports[n], fleet_peers=peers(n), **cut) for n in "bc"]
        hosts = [a, *others]
        lb = haproxy([h.port for h in hosts])
        wait_for(lambda: lb.servers("stor_write") == {"stor1": "DOWN", "stor2": "UP",
                                                      "stor3": "UP"}, "a out of the upload pool")
        wait_for(lambda: lb.servers("stor") == {"stor1": "UP", "stor2": "UP", "stor3": "UP"},
                 "every host in the read pool")
        files = [os.urandom(20_000 + i) for i in range(30)]
        for data in files:
            status, body = upload(lb.port, data)
            assert status == 201 and host_of(hosts, body) is not a

        for data in files:
            answer = request(lb.port, "GET", f"/{sha256(data)}")
            assert (answer.status, answer.body == data) == (200, True), lb.log
            assert request(lb.port, "HEAD", f"/{sha256(data)}").status == 200
        asked = [r for r in a.proc.access() if r["method"] == "GET" and r["sha"]]
        assert asked and {r["status"] for r in asked} == {200}, \
            "host a was asked for files it did not have, and found them at its peers"

    if its_s3 == "behind":  # the other hosts reach the bucket: a serves the files itself
        for host in others:
            assert fleet.stop(host) == 0
            host.config_path.write_text(json.dumps({
                **json.loads(host.config_path.read_text()), **good}))
            fleet.restart(host)
        for data in files:
            assert wait_in_bucket(rgw, bucket, sha256(data)) == sha256(data)
        data = files[0]
        answer = request(a.port, "GET", f"/{sha256(data)}")
        assert (answer.status, answer.body == data) == (200, True)


def test_a_hung_host_leaves_both_pools_within_seconds(fleet: Fleet, haproxy: Any, rgw: Any,
                                                     tmp_path: Path) -> None:
    bucket = rgw.new_bucket()
    keys = s3_keys(rgw, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    hosts = [fleet.start(name, **keys) for name in ("a", "b", "c")]
    lb = haproxy([h.port for h in hosts])
    both_pools_up(lb, ["stor1", "stor2", "stor3"])
    files = [os.urandom(5000 + i) for i in range(12)]
    for data in files:
        assert upload(lb.port, data)[0] == 201
    for data in files:  # in the bucket before a host hangs: then the others can serve them
        wait_in_bucket(rgw, bucket, sha256(data))
    os.kill(hosts[0].pid, signal.SIGSTOP)
    try:
        stopped = time.monotonic()
        wait_for(lambda: lb.servers("stor")["stor1"] == "DOWN"
                 and lb.servers("stor_write")["stor1"] == "DOWN", "a hung host marked down",
                 timeout=30)
        left_after = time.monotonic() - stopped
        (tmp_path / "hung-host-left-after.txt").write_text(f"{left_after:.2f}\n")
        assert left_after < 5.0, f"a hung host left the pools after {left_after:.1f}s"
        for data in files:  # its files are served by the others (from the bucket)
            started = time.monotonic()
            answer = request(lb.port, "GET", f"/{sha256(data)}")
            assert (answer.status, answer.body == data) == (200, True)
            assert time.monotonic() - started < 2.0
        for i in range(6):
            assert upload(lb.port, f"while a hangs {i}".encode())[0] == 201
    finally:
        os.kill(hosts[0].pid, signal.SIGCONT)
    both_pools_up(lb, ["stor1", "stor2", "stor3"])


def s3_sync_dry_run(host: Host) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stor.cli.main", "s3-sync", "--dry-run",
                           "--config", str(host.config_path)],
                          capture_output=True, text=True, timeout=120)


def test_draining_then_retiring_a_host_loses_nothing(fleet: Fleet, haproxy: Any,
                                                     rgw: Any) -> None:
    """A drain that lasts across HAProxy reloads (docs/fleet-operations.rst, "Write
    readiness": write_headroom above its disks takes a host out of the upload pool;
    test_fleet_procedures runs the page's drain through HAProxy's runtime API): outbox
    empty, s3-sync --dry-run clean; then stopped, and every file it took is still read
    through the balancer."""
    bucket = rgw.new_bucket()
    ports = {name: free_port() for name in "ab"}
    keys = s3_keys(rgw, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    a, b = [fleet.start(n, port=ports[n], **keys, fleet_peers=[
        f"http://127.0.0.1:{p}" for m, p in ports.items() if m != n]) for n in "ab"]
    lb = haproxy([a.port, b.port])
    both_pools_up(lb, ["stor1", "stor2"])
    files = [os.urandom(30_000 + i) for i in range(16)]
    taken = [data for data in files if host_of([a, b], upload(lb.port, data)[1]) is a]
    assert taken, "host a took none of the uploads"

    assert fleet.stop(a) == 0  # drain: out of the upload pool, reads go on
    a.config_path.write_text(json.dumps({**json.loads(a.config_path.read_text()),
                                         "write_headroom": 2 ** 60}))
    fleet.restart(a)
    wait_for(lambda: lb.servers("stor_write") == {"stor1": "DOWN", "stor2": "UP"}
             and lb.servers("stor")["stor1"] == "UP", "a out of the upload pool only")
    more = [os.urandom(40_000 + i) for i in range(6)]
    assert all(host_of([a, b], upload(lb.port, data)[1]) is b for data in more)

    def outbox_empty() -> bool:
        state = json.loads(request(a.port, "GET", "/status",
                                   headers={"Accept": "application/json"}).body)
        return state["s3_outbox"]["depth"] == 0

    wait_for(outbox_empty, "host a's outbox empty", timeout=60)
    done = s3_sync_dry_run(a)
    assert done.returncode == 0 and "0 missing from S3" in done.stdout, done.stdout + done.stderr

    assert fleet.stop(a) == 0  # retire
    wait_for(lambda: lb.servers("stor")["stor1"] == "DOWN", "a out of the read pool")
    for data in files + more:
        answer = request(lb.port, "GET", f"/{sha256(data)}")
        assert (answer.status, answer.body == data) == (200, True)
