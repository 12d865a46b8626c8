"""Acceptance (issue 20, item 1): three hosts behind the shipped
conf/haproxy-fleet.cfg, one bucket on Ceph RGW (behind a relay the test can
hold silent), one memcached, uploads (1 KiB - 8 MiB, paced) and verified reads through
the balancer while

- host a is SIGKILLed, and started again once both pools have marked it down;
- host b is SIGSTOPped (hung) until both pools have marked it down, then resumed;
- S3 hangs for a minute (the relay takes connections and never answers), and
  during that minute memcached restarts and host b restarts gracefully;
- host c (32 MiB tmpfs disks, ``write_headroom`` 9 MiB) fills up.

Asserted:

- every acknowledged upload reads back exactly through the balancer and from
  every host, and its object is in the bucket after the drain (same MD5);
- no read of an acknowledged file answered anything but 200 with its bytes
  while a host holding it was serving, or the bucket had it and S3 answered
  (the only reads excused: its holder was down, hung, stopping or restarting
  and S3 hung or the bucket did not have it yet);
- no upload begun more than one check period (``inter`` x ``fall``, plus the
  last check's timeout) after host c fell below its headroom answered 507;
- the outage's backlog left every outbox within 60 s of S3's return (the time
  is measured and printed); every outbox is empty once the load stops.

Every wait is for an event (a pool marking a host down or up, an outbox
state), bounded; only the faults' own durations are fixed.
"""

import hashlib
import json
import math
import os
import random
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from botocore.exceptions import ClientError
from twisted.internet import reactor, task, threads

from support.fleet import Host, s3_keys, s3_relay
from support.harness import AUTH_HEADER, request
from support.ports import free_port
from stor.core import layout
from test_fleet import host_of
from test_fleet_ops import CHECK_PERIOD, tmpfs_mounts  # noqa: F401 (a fixture)

pytestmark = pytest.mark.acceptance('fault', 'haproxy', 'memcached', 'moto', 'stor-process')

KiB, MiB = 1024, 1024 * 1024
LARGEST = 8 * MiB
S3_OUTAGE = 60.0  # seconds S3 hangs
LOAD_AFTER_S3 = 20.0  # seconds of load at least after S3 is back
DRAIN_LIMIT = 60.0  # the backlog must leave the outboxes within this after S3's return
# The upload thread's pace (bytes/s, averaged since it began): the outage's backlog is
# this pace x S3_OUTAGE (~480 MiB over a and b), not whatever one client reaches on the
# day -- unpaced, each speed-up of stor's uploads grew the backlog the drain is timed on.
UPLOAD_PACE = 8 * MiB
NAMES = {"a": "stor1", "b": "stor2", "c": "stor3"}


def file_size(rng: random.Random) -> int:
    """Log-uniform from 1 KiB to 8 MiB: as many files of a few KiB as of a few MiB."""
    return int(math.exp(rng.uniform(math.log(KiB), math.log(LARGEST))))


class Chaos:
    """When each host could not serve (down, hung, stopping, restarting: from the
    fault until both pools have it up again, plus one check period for its peers'
    probes), and when S3 hung."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.out: dict[str, list[list[float]]] = {n: [] for n in NAMES}
        self.s3_hung: list[list[float]] = []

    def begin(self, windows: list[list[float]]) -> None:
        with self.lock:
            windows.append([time.monotonic(), math.inf])

    def end(self, windows: list[list[float]], grace: float = 0.0) -> None:
        with self.lock:
            windows[-1][1] = time.monotonic() + grace

    def during(self, windows: list[list[float]], began: float, ended: float) -> bool:
        with self.lock:
            return any(start <= ended and began <= end for start, end in windows)


@dataclass
class Op:
    began: float
    ended: float
    kind: str  # "put" or "get"
    status: int  # 0: no answer (connection failed)
    sha: str
    holder: str = "-"
    exact: bool = True
    in_bucket: bool | None = None  # asked of the bucket before a read whose holder was out


class Load:
    """One thread uploading (at most ``UPLOAD_PACE`` on average), one reading
    acknowledged files (verified: the body hashes to its name), both through the
    balancer, until stopped."""

    def __init__(self, port: int, hosts: list[Host], chaos: Chaos, rgw: Any, bucket: str,
                 seed: int) -> None:
        self.port, self.hosts, self.chaos = port, hosts, chaos
        self.rgw, self.bucket = rgw, bucket
        self.s3: Any = None  # the reading thread's client
        self.seed = seed
        self.ops: list[Op] = []
        self.stored: dict[str, tuple[int, str]] = {}  # sha -> (size, md5)
        self.holder: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._uploads, daemon=True),
                        threading.Thread(target=self._reads, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
            assert not t.is_alive(), "a load thread is stuck"

    def _record(self, op: Op) -> None:
        with self.lock:
            self.ops.append(op)

    def _uploads(self) -> None:
        rng = random.Random(self.seed)
        began_at, sent = time.monotonic(), 0
        while not self.stop.wait(max(0.0, began_at + sent / UPLOAD_PACE - time.monotonic())):
            data = rng.randbytes(file_size(rng))
            sent += len(data)
            sha, began = hashlib.sha256(data).hexdigest(), time.monotonic()
            try:
                answer = request(self.port, "POST", f"/{sha}", data,
                                 {"Authorization": AUTH_HEADER}, timeout=90)
            except OSError:
                self._record(Op(began, time.monotonic(), "put", 0, sha))
                continue
            op = Op(began, time.monotonic(), "put", answer.status, sha)
            if answer.status in (200, 201):
                op.holder = host_of(self.hosts, json.loads(answer.body)).name
                with self.lock:
                    self.stored[sha] = (len(data), hashlib.md5(data).hexdigest())
                    self.holder[sha] = op.holder
            self._record(op)

    def _reads(self) -> None:
        rng = random.Random(self.seed + 1)
        while not self.stop.is_set():
            with self.lock:
                if not self.stored:
                    choice = None
                else:
                    choice = rng.choice(list(self.stored))
                    holder = self.holder[choice]
            if choice is None:
                time.sleep(0.05)
                continue
            self._read(choice, holder)

    def _read(self, sha: str, holder: str) -> None:
        began = time.monotonic()
        in_bucket = None
        if self.chaos.during(self.chaos.out[holder], began, began):
            in_bucket = self._in_bucket(sha)
        try:
            answer = request(self.port, "GET", f"/{sha}", timeout=90)
        except OSError:
            self._record(Op(began, time.monotonic(), "get", 0, sha, holder, True, in_bucket))
            return
        exact = answer.status != 200 or hashlib.sha256(answer.body).hexdigest() == sha
        self._record(Op(began, time.monotonic(), "get", answer.status, sha, holder, exact,
                        in_bucket))

    def _in_bucket(self, sha: str) -> bool:
        if self.s3 is None:
            self.s3 = self.rgw.client()  # RGW itself, not the relay
        try:
            self.s3.head_object(Bucket=self.bucket, Key=layout.s3_key(sha))
            return True
        except ClientError:
            return False


def status_of(host: Host) -> dict[str, Any] | None:
    """The host's /status JSON, or None while it does not answer."""
    try:
        answer = request(host.port, "GET", "/status", headers={"Accept": "application/json"},
                         timeout=5)
    except OSError:
        return None
    return json.loads(answer.body) if answer.status == 200 else None


class DrainWatch(threading.Thread):
    """From S3's return: when each host's outbox no longer holds a file stored
    before it (``oldest_age`` says when the oldest waiting file was stored)."""

    def __init__(self, hosts: list[Host], s3_back_wall: float) -> None:
        super().__init__(daemon=True)
        self.hosts, self.s3_back_wall = hosts, s3_back_wall
        self.started = time.monotonic()
        self.drained: dict[str, float] = {}  # host -> seconds after S3's return
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.drained) < len(self.hosts):
            for host in self.hosts:
                if host.name in self.drained:
                    continue
                asked = time.time()
                state = status_of(host)
                if state is None or not state["s3_outbox"]["scanned"]:
                    continue
                age = state["s3_outbox"]["oldest_age"]
                if age is None or asked - age >= self.s3_back_wall:
                    self.drained[host.name] = time.monotonic() - self.started
            self.stop.wait(0.25)

    @property
    def seconds(self) -> float | None:
        return max(self.drained.values()) if len(self.drained) == len(self.hosts) else None


async def after(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def until(predicate: Any, what: str, timeout: float = 60.0) -> float:
    """Poll the blocking ``predicate`` in a thread until it holds; the seconds it took."""
    started = time.monotonic()
    while not await threads.deferToThread(predicate):
        assert time.monotonic() - started < timeout, f"timed out after {timeout}s: {what}"
        await after(0.1)
    return time.monotonic() - started


@pytest_twisted.ensureDeferred
async def test_a_fleet_under_load_through_kills_hangs_an_s3_outage_and_a_full_host(
        fleet: Any, haproxy: Any, rgw: Any, memcached: Any, tmpfs_mounts: Any,
        tmp_path: Path) -> None:
    bucket = await threads.deferToThread(rgw.new_bucket)
    relay = await s3_relay(rgw)
    ports = {n: free_port() for n in NAMES}
    chaos = Chaos()
    measured: dict[str, Any] = {}

    def keys(name: str) -> dict[str, Any]:
        return s3_keys(rgw, bucket, relay.endpoint, s3_write_through=True, s3_enabled=True,
                       s3_read="fallback", s3_timeout=2, s3_connect_timeout=1,
                       memcached_servers=[f"127.0.0.1:{memcached.port}"],
                       memcached_prefix=f"{name}:", write_headroom=9 * MiB,
                       fleet_peers=[f"http://127.0.0.1:{p}" for n, p in ports.items()
                                    if n != name])

    load: Load | None = None
    try:
        c = await threads.deferToThread(fleet.start, "c", True, ports["c"], **keys("c"))
        assert await threads.deferToThread(fleet.stop, c) == 0  # small disks for c
        tmpfs_mounts(c, 32 * MiB)
        await threads.deferToThread(fleet.restart, c)
        a = await threads.deferToThread(fleet.start, "a", True, ports["a"], **keys("a"))
        b = await threads.deferToThread(fleet.start, "b", True, ports["b"], **keys("b"))
        hosts = [a, b, c]
        lb = haproxy([h.port for h in hosts])

        def in_pools(name: str, state: str) -> Any:
            def check() -> bool:
                return all(lb.servers(pool)[NAMES[name]].startswith(state)
                           for pool in ("stor", "stor_write"))
            return check

        for name in NAMES:
            await until(in_pools(name, "UP"), f"{name} up in both pools")
        load = Load(lb.port, hosts, chaos, rgw, bucket, seed=20)
        fell_below: list[float] = []

        def watch_c() -> None:
            while not load.stop.is_set() and not fell_below:
                if request(c.port, "GET", "/health/write").status == 503:
                    fell_below.append(time.monotonic())
                time.sleep(0.2)

        watcher = threading.Thread(target=watch_c, daemon=True)
        load.start()
        watcher.start()
        started = time.monotonic()

        await after(3)
        os.kill(a.pid, signal.SIGKILL)  # a host killed ...
        chaos.begin(chaos.out["a"])
        measured["killed_host_out_of_both_pools_s"] = await until(
            in_pools("a", "DOWN"), "the killed host out of both pools")
        await threads.deferToThread(fleet.restart, a)  # ... and started again
        await until(in_pools("a", "UP"), "the restarted host back in both pools")
        chaos.end(chaos.out["a"], CHECK_PERIOD)

        os.kill(b.pid, signal.SIGSTOP)  # a host hung ...
        chaos.begin(chaos.out["b"])
        try:
            measured["hung_host_out_of_both_pools_s"] = await until(
                in_pools("b", "DOWN"), "the hung host out of both pools")
        finally:
            os.kill(b.pid, signal.SIGCONT)  # ... and resumed
        await until(in_pools("b", "UP"), "the resumed host back in both pools")
        chaos.end(chaos.out["b"], CHECK_PERIOD)

        relay.mode = "hold"  # S3 hangs ...
        await relay.drop()
        chaos.begin(chaos.s3_hung)
        hung_at = time.monotonic()
        await after(10)
        await threads.deferToThread(memcached.restart)  # ... memcached restarts ...
        await after(5)
        chaos.begin(chaos.out["b"])  # ... b restarts gracefully, its outbox full ...
        assert await threads.deferToThread(fleet.stop, b) == 0
        await threads.deferToThread(fleet.restart, b)
        await until(in_pools("b", "UP"), "b back in both pools after its restart")
        chaos.end(chaos.out["b"], CHECK_PERIOD)
        await after(max(0.0, S3_OUTAGE - (time.monotonic() - hung_at)))
        relay.mode = "relay"  # ... and S3 returns
        await relay.drop()
        chaos.end(chaos.s3_hung)
        s3_back = time.monotonic()
        measured["s3_outage_s"] = round(s3_back - hung_at, 1)
        drain = DrainWatch(hosts, time.time())
        drain.start()

        await until(lambda: drain.seconds is not None or drain.started + DRAIN_LIMIT
                    < time.monotonic(), "the outage's backlog drained", DRAIN_LIMIT + 10)
        measured["backlog_drained_after_s3_returned_s"] = drain.seconds
        measured["drained_per_host_s"] = dict(drain.drained)
        await after(max(0.0, LOAD_AFTER_S3 - (time.monotonic() - s3_back)))
        await threads.deferToThread(load.join)
        measured["load_s"] = round(time.monotonic() - started, 1)
        drain.stop.set()
        await threads.deferToThread(watcher.join, 10)
        assert drain.seconds is not None and drain.seconds <= DRAIN_LIMIT, \
            f"the outage's backlog not out of every outbox {DRAIN_LIMIT}s after S3 returned: " \
            f"{drain.drained}"

        def all_empty() -> bool:
            states = [status_of(h) for h in hosts]
            return all(s is not None and s["s3_outbox"]["depth"] == 0 for s in states)

        measured["outboxes_empty_after_load_stopped_s"] = round(
            await until(all_empty, "every outbox empty once the load stopped", DRAIN_LIMIT), 1)

        def excused(op: Op) -> bool:
            """Only a read whose holder could not serve, while the bucket could not either."""
            if not chaos.during(chaos.out[op.holder], op.began, op.ended):
                return False
            return chaos.during(chaos.s3_hung, op.began, op.ended) or op.in_bucket is not True

        puts = Counter(op.status for op in load.ops if op.kind == "put")
        gets = Counter(op.status for op in load.ops if op.kind == "get")
        failed_reads = [op for op in load.ops if op.kind == "get" and op.status != 200]
        measured.update(puts=dict(puts), gets=dict(gets), stored=len(load.stored),
                        stored_mib=round(sum(s for s, _ in load.stored.values()) / MiB, 1),
                        failed_reads=[{"status": op.status, "holder": op.holder,
                                       "s3_hung": chaos.during(chaos.s3_hung, op.began, op.ended),
                                       "in_bucket": op.in_bucket, "excused": excused(op)}
                                      for op in failed_reads],
                        outages=chaos.out, s3_hung=chaos.s3_hung)
        assert len(load.stored) > 100, f"too little stored: {puts}"
        assert all(op.exact for op in load.ops), "wrong bytes served"
        not_excused = [op for op in failed_reads if not excused(op)]
        assert not not_excused, (not_excused[:5], gets, chaos.out)
        assert fell_below, "the small host never fell below its headroom"
        measured["c_fell_below_after_s"] = round(fell_below[0] - started, 1)
        late_507 = [op for op in load.ops if op.kind == "put" and op.status == 507
                    and op.began > fell_below[0] + CHECK_PERIOD]
        assert not late_507, (late_507[:5], puts)
        measured["c_took_after_falling_below"] = len(
            [op for op in load.ops if op.kind == "put" and op.holder == "c"
             and op.began > fell_below[0] + CHECK_PERIOD])

        def read_back(shas: list[str]) -> None:
            s3 = rgw.client()
            for sha in shas:
                size, md5 = load.stored[sha]
                for port, who in [(lb.port, "balancer")] + [(h.port, h.name) for h in hosts]:
                    answer = request(port, "GET", f"/{sha}", timeout=30)
                    assert (answer.status, hashlib.sha256(answer.body).hexdigest()) == \
                        (200, sha), (who, sha)
                head = s3.head_object(Bucket=bucket, Key=layout.s3_key(sha))
                assert (head["ContentLength"], head["ETag"].strip('"')) == (size, md5), sha

        read_back_started = time.monotonic()
        def read_all_back() -> None:  # in four threads (the relay runs on the reactor)
            shas = sorted(load.stored)
            with ThreadPoolExecutor(4) as pool:
                for _ in pool.map(read_back, [shas[i::4] for i in range(4)]):
                    pass

        await threads.deferToThread(read_all_back)
        measured["read_back_s"] = round(time.monotonic() - read_back_started, 1)
    finally:
        if load is not None:
            load.stop.set()
        (tmp_path / "chaos-measured.json").write_text(json.dumps(measured, indent=1,
                                                                 default=str))
        print(f"chaos measured: {json.dumps(measured, default=str)}")
        await relay.cut()
