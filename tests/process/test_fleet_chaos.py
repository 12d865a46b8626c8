"""Acceptance (issue 20): three hosts behind the shipped conf/haproxy-fleet.cfg,
one bucket on Ceph RGW (behind a relay the test can hold silent), one memcached,
a mixed load of uploads and verified reads while a host is killed and
restarted, one is hung and resumed, S3 hangs then returns, memcached restarts,
a host fills up and one restarts gracefully.

What is asserted, for every acknowledged upload: it reads back exactly through
the balancer and from every host, and is in the bucket after the drain; no
read of it answered 404, 503 or wrong bytes unless its holder was down or hung
at the time (then only the bucket could serve it, and it may not have had it
yet); no upload begun more than one check period after the small host fell
below its headroom answered 507; every outbox is empty within 60 s of S3's
return.
"""

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads

from support.fleet import Host, s3_keys, s3_relay
from support.harness import AUTH_HEADER, request, wait_for
from support.helpers import sha256
from support.ports import free_port
from support.s3write import stored_sha
from test_fleet import host_of
from test_fleet_ops import CHECK_PERIOD, tmpfs_mounts  # noqa: F401 (a fixture)

pytestmark = pytest.mark.acceptance('fault', 'haproxy', 'memcached', 'moto', 'stor-process')

KiB, MiB = 1024, 1024 * 1024
LOAD_SECONDS = 40.0


@dataclass
class Op:
    began: float
    ended: float
    kind: str  # "put" or "get"
    status: int
    sha: str
    holder: str = "-"
    exact: bool = True


class Load(threading.Thread):
    """Uploads (1 KiB - 2 MiB) and verified reads of acknowledged files, through the
    balancer, until stopped; every request is recorded."""

    def __init__(self, port: int, hosts: list[Host], seed: int) -> None:
        super().__init__(daemon=True)
        self.port, self.hosts = port, hosts
        self.rng = random.Random(seed)
        self.ops: list[Op] = []
        self.stored: dict[str, bytes] = {}
        self.holder: dict[str, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.stored and self.rng.random() < 0.5:
                self._get(self.rng.choice(list(self.stored)))
            else:
                self._put(self.rng.randbytes(self.rng.randrange(KiB, 2 * MiB)))

    def _put(self, data: bytes) -> None:
        sha, began = sha256(data), time.monotonic()
        try:
            answer = request(self.port, "POST", f"/{sha}", data, {"Authorization": AUTH_HEADER},
                             timeout=90)
        except OSError:
            self.ops.append(Op(began, time.monotonic(), "put", 0, sha))
            return
        op = Op(began, time.monotonic(), "put", answer.status, sha)
        if answer.status in (200, 201):
            op.holder = host_of(self.hosts, json.loads(answer.body)).name
            self.stored[sha], self.holder[sha] = data, op.holder
        self.ops.append(op)

    def _get(self, sha: str) -> None:
        began = time.monotonic()
        try:
            answer = request(self.port, "GET", f"/{sha}", timeout=90)
        except OSError:
            self.ops.append(Op(began, time.monotonic(), "get", 0, sha, self.holder[sha]))
            return
        self.ops.append(Op(began, time.monotonic(), "get", answer.status, sha, self.holder[sha],
                           answer.status != 200 or answer.body == self.stored[sha]))


def outbox_depth(host: Host) -> int:
    answer = request(host.port, "GET", "/status", headers={"Accept": "application/json"})
    return int(json.loads(answer.body)["s3_outbox"]["depth"])


async def after(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_fleet_under_load_through_kills_hangs_an_s3_outage_and_a_full_host(
        fleet: Any, haproxy: Any, rgw: Any, memcached: Any, tmpfs_mounts: Any) -> None:
    bucket = await threads.deferToThread(rgw.new_bucket)
    relay = await s3_relay(rgw)
    ports = {n: free_port() for n in "abc"}
    outages: dict[str, list[list[float]]] = {n: [] for n in "abc"}

    def keys(name: str) -> dict[str, Any]:
        return s3_keys(rgw, bucket, relay.endpoint, s3_write_through=True, s3_enabled=True,
                       s3_read="fallback", s3_timeout=2, s3_connect_timeout=1,
                       memcached_servers=[f"127.0.0.1:{memcached.port}"],
                       memcached_prefix=f"{name}:", write_headroom=4 * MiB,
                       fleet_peers=[f"http://127.0.0.1:{p}" for n, p in ports.items()
                                    if n != name])

    try:
        c = await threads.deferToThread(fleet.start, "c", True, ports["c"], **keys("c"))
        assert await threads.deferToThread(fleet.stop, c) == 0  # small disks for c
        tmpfs_mounts(c, 24 * MiB)
        await threads.deferToThread(fleet.restart, c)
        a = await threads.deferToThread(fleet.start, "a", True, ports["a"], **keys("a"))
        b = await threads.deferToThread(fleet.start, "b", True, ports["b"], **keys("b"))
        hosts = [a, b, c]
        lb = haproxy([h.port for h in hosts])
        names = {"stor1": "a", "stor2": "b", "stor3": "c"}
        await threads.deferToThread(wait_for, lambda: lb.servers("stor_write") == {
            s: "UP" for s in names}, "every host in the upload pool")
        load = Load(lb.port, hosts, seed=20)
        fell_below: list[float] = []

        def watch_c() -> None:
            while not load.stop.is_set() and not fell_below:
                if request(c.port, "GET", "/health/write").status == 503:
                    fell_below.append(time.monotonic())
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_c, daemon=True)
        load.start()
        watcher.start()

        await after(3)
        os.kill(a.pid, signal.SIGKILL)  # a host killed ...
        outages["a"].append([time.monotonic(), 0.0])
        await after(3)
        await threads.deferToThread(fleet.restart, a)  # ... and started again
        outages["a"][-1][1] = time.monotonic() + CHECK_PERIOD

        os.kill(b.pid, signal.SIGSTOP)  # a host hung ...
        outages["b"].append([time.monotonic(), 0.0])
        await after(4)
        os.kill(b.pid, signal.SIGCONT)  # ... and resumed
        outages["b"][-1][1] = time.monotonic() + CHECK_PERIOD

        relay.mode = "hold"  # S3 hangs ...
        await relay.drop()
        await after(8)
        relay.mode = "relay"  # ... and returns
        await relay.drop()
        s3_back = time.monotonic()

        await threads.deferToThread(memcached.restart)
        await after(2)
        outages["b"].append([time.monotonic(), 0.0])
        assert await threads.deferToThread(fleet.stop, b) == 0  # a graceful restart
        await threads.deferToThread(fleet.restart, b)
        outages["b"][-1][1] = time.monotonic() + CHECK_PERIOD
        await after(max(0.0, LOAD_SECONDS - (time.monotonic() - s3_back) - 14))
        load.stop.set()
        await threads.deferToThread(load.join, 120)
        await threads.deferToThread(watcher.join, 10)

        async def drained() -> bool:
            depths = [await threads.deferToThread(outbox_depth, h) for h in hosts]
            return sum(depths) == 0

        while not await drained():
            assert time.monotonic() - s3_back < 60, "outboxes not empty 60 s after S3 returned"
            await after(0.5)

        def excused(op: Op) -> bool:
            return any(start <= op.ended and op.began <= end
                       for start, end in outages.get(op.holder, []))

        puts = Counter(op.status for op in load.ops if op.kind == "put")
        gets = Counter(op.status for op in load.ops if op.kind == "get")
        assert load.stored, f"nothing stored: {puts}"
        assert all(op.exact for op in load.ops), "wrong bytes served"
        failed_reads = [op for op in load.ops if op.kind == "get" and op.status != 200
                        and not excused(op)]
        assert not failed_reads, (failed_reads[:5], gets, outages)
        assert fell_below, "the small host never fell below its headroom"
        late_507 = [op for op in load.ops if op.kind == "put" and op.status == 507
                    and op.began > fell_below[0] + CHECK_PERIOD]
        assert not late_507, (late_507[:5], puts)

        def read_back() -> None:
            for sha, data in load.stored.items():
                answer = request(lb.port, "GET", f"/{sha}", timeout=30)
                assert (answer.status, answer.body == data) == (200, True), sha
                for host in hosts:
                    answer = request(host.port, "GET", f"/{sha}", timeout=30)
                    assert (answer.status, answer.body == data) == (200, True), (host.name, sha)
                assert stored_sha(rgw, bucket, sha) == sha

        await threads.deferToThread(read_back)
        print(f"chaos: puts {dict(puts)}, gets {dict(gets)}, stored {len(load.stored)}")
    finally:
        await relay.cut()
