"""The lookup cache: the LRU alone, and in front of a real memcached that dies and comes back."""

import hashlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from pymemcache.client.base import Client
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import globalLogPublisher

from memcached_peer import MemcachedPeer
from stor.peers.cache import CacheStats, LocalCache, Lru, MemcachedCache, build_cache
from stor.config import Config

T = TypeVar("T")

FAST = {"timeout": 0.2, "retry_timeout": 0.05, "dead_timeout": 0.2}
"""Short enough that an outage and a recovery fit in a test, long enough for a loaded machine."""

PROMPT = 2.0
"""How long a get may take while memcached is down."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fired(d: "Deferred[T]") -> T:
    """The result of a Deferred that has already fired: the answer came without a thread hop."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired yet"
    return results[0]  # type: ignore[no-any-return]


async def eventually(probe: Callable[[], Awaitable[T]], expected: T, timeout: float = 5.0) -> None:
    """Poll ``probe`` until it yields ``expected``; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while (got := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, wanted {expected!r}"
        await deferLater(reactor, 0.02)


def raw_get(peer: MemcachedPeer, key: str) -> "Deferred[bytes | None]":
    """What memcached itself holds under ``key`` (a blocking client of the test's own)."""
    client = Client(peer.address, connect_timeout=1, timeout=1)
    try:
        return succeed(client.get(key))
    finally:
        client.close()


@contextmanager
def black_hole() -> Iterator[tuple[str, int]]:
    """A server that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()


@pytest.fixture
def caches() -> Iterator[Callable[..., MemcachedCache]]:
    """Started MemcachedCaches with test timings; stopped after the test."""
    started: list[MemcachedCache] = []

    def make(servers: list[tuple[str, int]], **options: Any) -> MemcachedCache:
        cache = MemcachedCache(servers, reactor, **{**FAST, **options})
        cache.startService()
        started.append(cache)
        return cache

    yield make
    for cache in started:
        if cache.running:
            cache.stopService()


@pytest.fixture
def transitions() -> Iterator[Callable[[object], list[str]]]:
    """``transitions(cache)``: the up/down states ``cache`` logged, in order."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)

    def of(cache: object) -> list[str]:
        return [e["memcached"] for e in events if e.get("log_source") is cache and "memcached" in e]

    yield of
    globalLogPublisher.removeObserver(events.append)


# -- the LRU alone ---------------------------------------------------------


def test_lru_evicts_the_least_recently_used() -> None:
    cache = LocalCache(lru_size=3)
    for name in "abc":
        cache.put(sha(name), f"/data/{name}")
    assert fired(cache.get(sha("a"))) == "/data/a"  # a is now the most recently used
    cache.put(sha("d"), "/data/d")
    assert fired(cache.get(sha("b"))) is None
    assert [fired(cache.get(sha(n))) for n in "acd"] == ["/data/a", "/data/c", "/data/d"]
    assert cache.stats == CacheStats(lru_hits=4, misses=1)
    assert cache.stats.hits == 4


def test_local_cache_drop() -> None:
    cache = LocalCache()
    cache.put(sha("a"), "/data/a")
    cache.drop(sha("a"))
    cache.drop(sha("never cached"))
    assert fired(cache.get(sha("a"))) is None


@given(
    size=st.integers(1, 4),
    ops=st.lists(st.tuples(st.sampled_from(["put", "get", "drop"]), st.integers(0, 6))),
)
def test_lru_matches_a_model(size: int, ops: list[tuple[str, int]]) -> None:
    """Whatever the operations, the LRU holds the ``size`` most recently used entries."""
    lru = Lru(size)
    model: list[tuple[str, str]] = []  # least recently used first
    for n, (op, k) in enumerate(ops):
        key = str(k)
        current = dict(model).get(key)
        model = [(mk, mv) for mk, mv in model if mk != key]
        if op == "put":
            lru.put(key, f"v{n}")
            model = (model + [(key, f"v{n}")])[-size:]
        elif op == "get":
            assert lru.get(key) == current
            if current is not None:
                model.append((key, current))
        else:
            lru.drop(key)
        assert len(lru) == len(model) <= size
    assert all(lru.get(k) == v for k, v in model)


def test_build_cache_follows_the_config() -> None:
    config = Config(storage_pairs=(("/data1", "/data2"),))
    assert type(build_cache(config, reactor)) is LocalCache
    config = replace(config, memcached_servers=(("127.0.0.1", 1),), memcached_timeout=0.1)
    cache = build_cache(config, reactor)
    assert isinstance(cache, MemcachedCache)
    assert cache.servers == (("127.0.0.1", 1),)
    # not started: the LRU answers alone, at once, and nothing waits for a thread
    cache.put(sha("a"), "/data/a")
    assert fired(cache.get(sha("a"))) == "/data/a"
    assert fired(cache.get(sha("b"))) is None


# -- with a real memcached -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_round_trip_through_memcached(memcached: MemcachedPeer, caches: Any) -> None:
    writer, reader = caches([memcached.address]), caches([memcached.address])
    key, path = sha("round trip"), "/srv/data1/é/ab/cd/file.dat"
    writer.put(key, path)
    assert fired(writer.get(key)) == path  # from the LRU, without a thread hop
    await eventually(lambda: reader.get(key), path)  # reader's LRU was empty: memcached had it
    assert fired(raw_get(memcached, key)) == path.encode("utf-8")
    assert reader.stats.memcached_hits == 1
    assert fired(reader.get(key)) == path  # and now reader's LRU has it too
    assert reader.stats.lru_hits == 1
    assert writer.stats.errors == reader.stats.errors == 0


@pytest_twisted.ensureDeferred
async def test_drop_removes_from_lru_and_memcached(memcached: MemcachedPeer, caches: Any) -> None:
    cache = caches([memcached.address])
    key = sha("stale")
    cache.put(key, "/data/gone.dat")
    await eventually(lambda: raw_get(memcached, key), b"/data/gone.dat")
    cache.drop(key)
    assert await cache.get(key) is None  # not the LRU, nor memcached while the delete is on its way
    await eventually(lambda: raw_get(memcached, key), None)
    assert await cache.get(key) is None
    assert cache.stats.hits == 0


@pytest_twisted.ensureDeferred
async def test_killed_memcached_is_a_prompt_miss(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    writer, reader = caches([memcached.address]), caches([memcached.address])
    writer.put(sha("a"), "/data/a")
    await eventually(lambda: reader.get(sha("a")), "/data/a")  # reader now has an open connection

    memcached.kill()
    for i in range(5):
        start = time.monotonic()
        assert await reader.get(sha(f"missing {i}")) is None
        assert time.monotonic() - start < PROMPT
        reader.put(sha(f"new {i}"), f"/data/new{i}")  # does not raise
    assert fired(reader.get(sha("a"))) == "/data/a"  # the LRU still answers
    assert fired(reader.get(sha("new 0"))) == "/data/new0"
    assert reader.stats.errors >= 1
    assert reader.stats.servers_down == (f"127.0.0.1:{memcached.port}",)
    assert transitions(reader) == ["down"]  # once, not once per request


@pytest_twisted.ensureDeferred
async def test_values_flow_again_after_a_restart(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    writer, reader = caches([memcached.address]), caches([memcached.address])
    writer.put(sha("before"), "/data/before")
    await eventually(lambda: reader.get(sha("before")), "/data/before")

    memcached.kill()
    assert await reader.get(sha("during")) is None
    writer.put(sha("during"), "/data/during")
    assert transitions(reader) == ["down"]

    memcached.restart()
    key = sha("after")

    async def written_then_read() -> str | None:
        writer.put(key, "/data/after")  # again each time: a put while a server is left out is lost
        return await reader.get(key)

    await eventually(written_then_read, "/data/after")
    assert transitions(reader) == ["down", "up"]
    assert reader.stats.servers_down == ()

    async def writer_transitions() -> list[str]:
        return transitions(writer)

    await eventually(writer_transitions, ["down", "up"])


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_by_a_restart_is_reopened_quietly(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    cache = caches([memcached.address], threads=1)  # one client: its connection is reused
    cache.put(sha("a"), "/data/a")
    await eventually(lambda: raw_get(memcached, sha("a")), b"/data/a")
    memcached.restart()  # between two calls: nothing is in flight
    cache.put(sha("b"), "/data/b")
    await eventually(lambda: raw_get(memcached, sha("b")), b"/data/b")
    assert cache.stats.errors == 0
    assert transitions(cache) == []


@pytest_twisted.ensureDeferred
async def test_a_silent_server_never_blocks_the_reactor(caches: Any, transitions: Any) -> None:
    ticks: list[float] = []
    loop = LoopingCall(lambda: ticks.append(time.monotonic()))
    with black_hole() as address:
        cache = caches([address], timeout=0.3)
        loop.start(0.01)
        start = time.monotonic()
        got = await cache.get(sha("anything"))
        elapsed = time.monotonic() - start
        cache.put(sha("anything"), "/data/x")  # does not raise either
        loop.stop()
    assert got is None
    assert 0.25 <= elapsed < PROMPT  # the get did wait for the server's timeout, in a thread
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) >= 10, f"the LoopingCall ticked {len(ticks)} times in {elapsed:.3f} s"
    assert max(gaps) < 0.15, f"the reactor stalled for {max(gaps):.3f} s"
    assert cache.stats.errors == 1
    assert transitions(cache) == ["down"]


@pytest_twisted.ensureDeferred
async def test_too_many_pending_calls_are_skipped(caches: Any) -> None:
    with black_hole() as address:
        cache = caches([address], timeout=0.3, max_pending=2)
        slow = [cache.get(sha(f"slow {i}")) for i in range(2)]
        assert fired(cache.get(sha("one too many"))) is None  # skipped: answered at once
        assert cache.stats.skipped == 1
        assert await gatherResults(slow) == [None, None]


@pytest_twisted.ensureDeferred
async def test_a_stopped_cache_answers_from_its_lru(memcached: MemcachedPeer, caches: Any) -> None:
    cache = caches([memcached.address])
    cache.put(sha("a"), "/data/a")
    await eventually(lambda: raw_get(memcached, sha("a")), b"/data/a")
    cache.stopService()
    assert fired(cache.get(sha("a"))) == "/data/a"
    assert fired(cache.get(sha("b"))) is None  # no memcached call after stop, so no hang
    cache.put(sha("c"), "/data/c")
    cache.drop(sha("a"))
    assert fired(cache.get(sha("a"))) is None


@pytest_twisted.ensureDeferred
async def test_keys_spread_over_several_servers(memcached_peers: Any, caches: Any) -> None:
    peers = [memcached_peers(), memcached_peers()]
    addresses = [p.address for p in peers]
    writer, reader = caches(addresses), caches(addresses)
    keys = [sha(str(i)) for i in range(20)]
    for k in keys:
        writer.put(k, f"/data/{k}")
    for k in keys:
        await eventually(lambda: reader.get(k), f"/data/{k}")  # noqa: B023 (awaited at once)
    held = [sum(fired(raw_get(p, k)) is not None for k in keys) for p in peers]
    assert sum(held) == len(keys) and all(held)
