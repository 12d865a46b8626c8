"""What a memcached round trip costs stor's reactor thread: thread pool + pymemcache vs Twisted.

Usage (from the repository root)::

    .venv/bin/pip install -e '.[bench]'      # pymemcache, for the ``pool`` client
    .venv/bin/python bench/memcache.py [--rounds 7] [--ops 10000] [--ops-serial 2000]

GETs are served on the reactor thread, so what matters about the lookup
cache's memcached client is less its raw speed than what each call takes
from that thread.  Three clients are measured against one memcached the bench
starts on a free loopback port (and stops afterwards):

``pool``
    The mechanism of the thread-pool cache stor used first (until the
    memcached client moved onto the reactor): one pymemcache ``HashClient``
    per pool thread (3 threads), checked out of a queue, each call a
    ``deferToThreadPool``.
``proto``
    ``twisted.protocols.memcache.MemCacheProtocol`` over one persistent TCP
    connection on the reactor; requests in flight are pipelined.
``stor``
    ``stor.cache.lookup.MemcachedCache`` as it is in this tree, through its
    public ``get`` with an LRU of one entry (so every get goes to memcached).
    Its ``put`` returns nothing to wait for, so it has no ``set`` rows.

For each operation (``get-hit``, ``get-miss``, ``set``) and each concurrency
(1 and 64 requests in flight), every round runs each client once, in an order
that alternates between rounds; the first round is a discarded warm-up.
Reported per row, as the median over rounds with [min–max]:

* ops/s: operations completed per wall-clock second;
* reactor µs/op: CPU time of the reactor thread (``time.thread_time``) per
  operation, the driver loop included (the ``floor`` row is that driver with
  an operation that does nothing);
* process µs/op: CPU time of the whole process (every thread) per operation;
* p50 / p99 latency of single operations, in µs;
* busy ops/s and busy reactor µs/op: the same run while the reactor is also
  kept busy with back-to-back 50 µs slices of pure-Python work standing in for
  GETs.  Busy reactor µs/op is the wall time the reactor thread spent outside
  those slices, per operation: what a call really takes from the GETs,
  including the time the reactor thread waits for the GIL while pool threads
  hold it, which ``thread_time`` cannot see.

Only the standard library, stor's own dependencies and pymemcache (the
``bench`` extra) are used.  Exit status: 0 when every run finished, 2 when
memcached or pymemcache is missing.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.threads import deferToThreadPool
from twisted.protocols.memcache import MemCacheProtocol
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

HOST = "127.0.0.1"
TIMEOUT = 0.25
KEYS = 1000
CONCURRENCIES = (1, 64)
OPERATIONS = ("get-hit", "get-miss", "set")

Op = Callable[[str], "Deferred[Any]"]


# -- memcached -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextmanager
def memcached(binary: str) -> Iterator[tuple[str, int]]:
    """A memcached on a free loopback port, killed on the way out whatever happens."""
    port = free_port()
    argv = [binary, "-l", HOST, "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        argv += ["-u", "root"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection((HOST, port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"memcached did not start on port {port}") from None
                time.sleep(0.01)
        yield HOST, port
    finally:
        proc.kill()
        proc.wait()


# -- the clients -----------------------------------------------------------


class PoolClient:
    """The thread-pool mechanism: a HashClient per pool thread, each call a thread hop."""

    name = "pool"

    def __init__(self, reactor: Any, address: tuple[str, int], threads: int = 3) -> None:
        from pymemcache.client.hash import HashClient

        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=threads, name="bench-memcached")
        self._clients: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(threads):
            self._clients.put(HashClient(
                [address], connect_timeout=TIMEOUT, timeout=TIMEOUT, no_delay=True,
                ignore_exc=True, retry_attempts=2, retry_timeout=1, dead_timeout=10,
                default_noreply=False))

    async def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def get(self, key: str) -> "Deferred[Any]":
        return deferToThreadPool(self._reactor, self._pool, self._with, "get", key)

    def set(self, key: str, value: bytes) -> "Deferred[Any]":
        return deferToThreadPool(self._reactor, self._pool, self._with, "set", key, value)

    def _with(self, method: str, *args: Any) -> Any:
        client = self._clients.get_nowait()
        try:
            return getattr(client, method)(*args)
        finally:
            self._clients.put(client)


class ProtoClient:
    """``MemCacheProtocol`` on one persistent connection, on the reactor thread."""

    name = "proto"

    def __init__(self, reactor: Any, address: tuple[str, int]) -> None:
        self._endpoint = TCP4ClientEndpoint(reactor, *address, timeout=TIMEOUT)
        self._proto: MemCacheProtocol | None = None

    async def start(self) -> None:
        self._proto = await connectProtocol(self._endpoint, MemCacheProtocol(timeOut=TIMEOUT))
        self._proto.transport.setTcpNoDelay(True)

    def stop(self) -> None:
        assert self._proto is not None
        self._proto.transport.loseConnection()

    def get(self, key: str) -> "Deferred[Any]":
        assert self._proto is not None
        return self._proto.get(key.encode())

    def set(self, key: str, value: bytes) -> "Deferred[Any]":
        assert self._proto is not None
        return self._proto.set(key.encode(), value)


class StorClient:
    """stor's own MemcachedCache, whatever this tree holds, through its public interface."""

    name = "stor"

    def __init__(self, reactor: Any, address: tuple[str, int]) -> None:
        from stor.config.memcached import TcpServer
        from stor.cache.lookup import MemcachedCache

        self._cache = MemcachedCache([TcpServer(*address)], reactor, timeout=TIMEOUT, lru_size=1)

    async def start(self) -> None:
        self._cache.startService()
        await self._cache.get(sha("connected"))  # a get waits for the first connection

    def stop(self) -> None:
        self._cache.stopService()

    def get(self, key: str) -> "Deferred[Any]":
        return self._cache.get(key)

    set = None  # put() has nothing to wait for


class Floor:
    """An operation that does nothing: the cost of the driver loop itself."""

    name = "floor"

    async def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def get(self, key: str) -> "Deferred[Any]":
        return succeed(None)

    def set(self, key: str, value: bytes) -> "Deferred[Any]":
        return succeed(None)


# -- the driver ------------------------------------------------------------


class Spinner:
    """Stand-in for GETs: back-to-back slices of pure-Python work on the reactor, timed."""

    def __init__(self, reactor: Any, slice_us: float = 50.0) -> None:
        self._reactor = reactor
        self._call: Any = None
        self.busy = 0.0  # seconds spent inside slices since start()
        self._loops = 1000
        start = time.perf_counter()
        self._work()
        self._loops = max(1, int(1000 * slice_us / ((time.perf_counter() - start) * 1e6)))

    def _work(self) -> None:
        for _ in range(self._loops):
            pass

    def start(self) -> None:
        self.busy = 0.0
        self._call = self._reactor.callLater(0, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _tick(self) -> None:
        start = time.perf_counter()
        self._work()
        self.busy += time.perf_counter() - start
        self._call = self._reactor.callLater(0, self._tick)


@dataclass
class Sample:
    ops_per_s: float
    reactor_us: float
    process_us: float
    p50_us: float
    p99_us: float
    failures: int
    wall: float
    spinner_busy: float = 0.0


@dataclass
class Run:
    """``total`` calls of ``op`` over ``keys``, ``concurrency`` of them in flight at once.

    Completions that fire synchronously are looped over rather than recursed into.
    """

    op: Op
    keys: Sequence[str]
    total: int
    concurrency: int
    spinner: Spinner | None = None
    done: "Deferred[Sample]" = field(default_factory=Deferred)
    issued: int = 0
    finished: int = 0
    failures: int = 0
    latencies: list[float] = field(default_factory=list)

    def start(self) -> "Deferred[Sample]":
        self._t0 = (time.perf_counter(), time.thread_time(), time.process_time())
        if self.spinner is not None:
            self.spinner.start()
        for _ in range(min(self.concurrency, self.total)):
            self._next()
        return self.done

    def _next(self) -> None:
        while self.issued < self.total:
            key = self.keys[self.issued % len(self.keys)]
            self.issued += 1
            marker = [True]  # True while this loop is still on the stack
            began = time.perf_counter()
            self.op(key).addBoth(self._finished, began, marker)
            if marker[0] is None:
                continue  # it fired at once: issue the next one here
            marker[0] = False
            return

    def _finished(self, result: object, began: float, marker: list[bool | None]) -> None:
        self.latencies.append(time.perf_counter() - began)
        self.failures += isinstance(result, Failure)
        self.finished += 1
        if self.finished == self.total:
            self._end()
        elif marker[0]:
            marker[0] = None
        else:
            self._next()

    def _end(self) -> None:
        wall = time.perf_counter() - self._t0[0]
        reactor_cpu = time.thread_time() - self._t0[1]
        process_cpu = time.process_time() - self._t0[2]
        spun = 0.0
        if self.spinner is not None:
            self.spinner.stop()
            spun = self.spinner.busy
        lat = sorted(self.latencies)
        self.done.callback(Sample(
            ops_per_s=self.total / wall,
            reactor_us=reactor_cpu / self.total * 1e6,
            process_us=process_cpu / self.total * 1e6,
            p50_us=lat[len(lat) // 2] * 1e6,
            p99_us=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6,
            failures=self.failures,
            wall=wall,
            spinner_busy=spun,
        ))


def sha(text: str) -> str:
    return sha256(text.encode()).hexdigest()


def workload(client: Any, operation: str) -> tuple[Op | None, list[str]]:
    """The operation to call for ``operation`` and the keys to cycle through."""
    if operation == "set":
        if client.set is None:
            return None, []
        return (lambda key: client.set(key, path_of(key))), [sha(f"set {i}") for i in range(KEYS)]
    prefix = "hit" if operation == "get-hit" else "miss"
    return client.get, [sha(f"{prefix} {i}") for i in range(KEYS)]


def path_of(key: str) -> bytes:
    """A value shaped like what stor caches: a storage path of about 90 bytes."""
    upper = key.upper()
    return f"/srv/stor/data1/{upper[:2]}/{upper[2:4]}/{upper[4:6]}/{upper}.dat".encode()


# -- the rounds ------------------------------------------------------------


@dataclass
class Row:
    """Every round's samples of one (operation, concurrency, client)."""

    quiet: list[Sample] = field(default_factory=list)
    busy: list[Sample] = field(default_factory=list)
    busy_reactor_us: list[float] = field(default_factory=list)


Results = dict[tuple[str, int, str], Row]


async def measure(reactor: Any, address: tuple[str, int], args: argparse.Namespace) -> Results:
    clients = [Floor(), PoolClient(reactor, address), ProtoClient(reactor, address),
               StorClient(reactor, address)]
    spinner = Spinner(reactor)
    for client in clients:
        await client.start()
    try:
        await fill(clients[2], [sha(f"hit {i}") for i in range(KEYS)])
        results: Results = {}
        for round_no in range(args.rounds + 1):
            order = clients if round_no % 2 else clients[::-1]
            for operation in OPERATIONS:
                for concurrency in CONCURRENCIES:
                    total = args.ops if concurrency > 1 else args.ops_serial
                    for client in order:
                        op, keys = workload(client, operation)
                        if op is None:
                            continue
                        quiet = await Run(op, keys, total, concurrency).start()
                        busy = await Run(op, keys, total, concurrency, spinner).start()
                        if round_no:  # round 0 is the warm-up
                            row = results.setdefault((operation, concurrency, client.name), Row())
                            row.quiet.append(quiet)
                            row.busy.append(busy)
                            taken = busy.wall - busy.spinner_busy  # the reactor's time not spent on slices
                            row.busy_reactor_us.append(taken / total * 1e6)
            print(f"round {round_no}/{args.rounds} done", file=sys.stderr)
        return results
    finally:
        for client in clients:
            client.stop()


async def fill(client: ProtoClient, keys: Sequence[str]) -> None:
    for key in keys:
        await client.set(key, path_of(key))


def spread(values: list[float], fmt: str) -> str:
    """``median [min–max]``."""
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}–{format(max(values), fmt)}]"


COLUMNS = (  # title, width, values of a row, format
    ("ops/s", 20, lambda r: [s.ops_per_s for s in r.quiet], ".0f"),
    ("reactor µs/op", 18, lambda r: [s.reactor_us for s in r.quiet], ".1f"),
    ("process µs/op", 20, lambda r: [s.process_us for s in r.quiet], ".1f"),
    ("p50 µs", 7, lambda r: [s.p50_us for s in r.quiet], ".0f"),
    ("p99 µs", 7, lambda r: [s.p99_us for s in r.quiet], ".0f"),
    ("busy ops/s", 20, lambda r: [s.ops_per_s for s in r.busy], ".0f"),
    ("busy reactor µs/op", 20, lambda r: r.busy_reactor_us, ".1f"),
    ("busy p50", 8, lambda r: [s.p50_us for s in r.busy], ".0f"),
)


def table(results: Results) -> str:
    head = f"{'operation':<9} {'conc':>4} {'client':<6} " + " ".join(
        f"{title:>{width}}" for title, width, _, _ in COLUMNS) + "  fail"
    lines = [head, "-" * len(head)]
    for (operation, concurrency, name), row in results.items():
        cells = []
        for _, width, values, fmt in COLUMNS:
            v = values(row)
            text = spread(v, fmt) if width >= 18 else format(statistics.median(v), fmt)
            cells.append(f"{text:>{width}}")
        fails = sum(s.failures for s in row.quiet + row.busy)
        lines.append(f"{operation:<9} {concurrency:>4} {name:<6} " + " ".join(cells) + f"  {fails:>4}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (>= 5 advised)")
    parser.add_argument("--ops", type=int, default=10_000, help="operations per run with 64 in flight")
    parser.add_argument("--ops-serial", type=int, default=2_000, help="operations per run, one at a time")
    args = parser.parse_args(argv)
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    if not os.access(binary, os.X_OK):
        print("memcached is not installed (run `make install-test`)", file=sys.stderr)
        return 2
    if importlib.util.find_spec("pymemcache") is None:  # the pool client's
        print("pymemcache is not installed: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with memcached(binary) as address:
        results: Results = {}

        async def run(reactor: Any) -> None:
            results.update(await measure(reactor, address, args))

        try:
            task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
        except SystemExit as e:
            if e.code:
                return int(e.code)
    print(f"memcached round trips on 127.0.0.1, {args.rounds} rounds; median [min–max]")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
