"""The lookup cache: the LRU alone, and in front of real memcacheds that die, go silent and come back."""

import hashlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, TypeVar

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import globalLogPublisher

from support.ports import free_port
from support.memcached import MemcachedPeer
from stor.config import Config
from stor.config.memcached import MemcachedConfig, MemcachedServer, TcpServer, UnixServer
from stor.cache.lookup import CacheStats, LocalCache, Lru, MemcachedCache, build_cache
from stor.cache.memcached import MemcachedClient

T = TypeVar("T")

FAST = {"timeout": 0.2, "retry_timeout": 0.05, "dead_timeout": 0.2}
"""Short enough that an outage and a recovery fit in a test, long enough for a loaded machine."""

PROMPT = 2.0
"""How long a get may take while memcached is down."""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fired(d: "Deferred[T]") -> T:
    """The result of a Deferred that has already fired: the answer came without waiting."""
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


def held(peer: MemcachedPeer, key: str) -> "Deferred[bytes | None]":
    """What memcached itself holds under ``key``, as a Deferred for :func:`eventually`."""
    return succeed(peer.get(key.encode()))


@contextmanager
def black_hole() -> Iterator[TcpServer]:
    """A server that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield TcpServer(*s.getsockname())


@pytest_twisted.async_yield_fixture
async def caches() -> AsyncIterator[Callable[..., MemcachedCache]]:
    """Started MemcachedCaches with test timings; stopped after the test."""
    started: list[MemcachedCache] = []

    def make(servers: list[MemcachedServer], **options: Any) -> MemcachedCache:
        cache = MemcachedCache(servers, reactor, **{**FAST, **options})
        cache.startService()
        started.append(cache)
        return cache

    yield make
    await gatherResults([cache.stopService() for cache in started if cache.running])


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
    servers = (TcpServer("127.0.0.1", 1), UnixServer("/run/memcached.sock"))
    config = replace(config, memcached=MemcachedConfig(servers, timeout=0.1, prefix="h1:"))
    cache = build_cache(config, reactor)
    assert isinstance(cache, MemcachedCache)
    assert cache.servers == servers
    # not started: the LRU answers alone, at once
    cache.put(sha("a"), "/data/a")
    assert fired(cache.get(sha("a"))) == "/data/a"
    assert fired(cache.get(sha("b"))) is None


# -- where keys go ---------------------------------------------------------


def owners(servers: list[MemcachedServer], keys: list[bytes]) -> list[str]:
    """The server each key goes to (a client that is never started opens no connection)."""
    client = MemcachedClient(servers, reactor, timeout=1, retry_timeout=1, dead_timeout=1,
                             on_state=lambda *_: None)
    return [client.server_for(k).name for k in keys]


def test_keys_spread_evenly_and_stay_put_when_a_server_leaves() -> None:
    servers: list[MemcachedServer] = [TcpServer("mc1"), TcpServer("mc2", 11212),
                                      UnixServer("/run/mc.sock")]
    keys = [sha(str(i)).encode() for i in range(3000)]
    before = owners(servers, keys)
    assert owners(list(reversed(servers)), keys) == before  # the order of the list is irrelevant
    assert all(900 < n < 1100 for n in Counter(before).values()), Counter(before)
    after = owners(servers[:2], keys)  # mc.sock removed
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert {b for b, _ in moved} == {"/run/mc.sock"}  # only the removed server's keys move
    assert Counter(a for _, a in moved).keys() == {"mc1:11211", "mc2:11212"}


def test_the_spread_of_keys_is_fixed_across_processes() -> None:
    """Not Python's salted hash: these owners were computed once and must never change."""
    servers: list[MemcachedServer] = [TcpServer("10.0.0.1"), TcpServer("10.0.0.2"),
                                      TcpServer("::1", 11212)]
    keys = [sha(str(i)).encode() for i in range(8)]
    one, two, six = "10.0.0.1:11211", "10.0.0.2:11211", "[::1]:11212"
    assert owners(servers, keys) == [one, two, one, one, one, one, six, six]


# -- with a real memcached -------------------------------------------------


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_round_trip_through_memcached(memcached: MemcachedPeer, caches: Any) -> None:
    writer, reader = caches([memcached.server]), caches([memcached.server])
    key, path = sha("round trip"), "/srv/data1/é/ab/cd/file.dat"
    writer.put(key, path)  # sent as soon as the connection is up
    assert fired(writer.get(key)) == path  # from the LRU, at once
    await eventually(lambda: reader.get(key), path)  # reader's LRU was empty: memcached had it
    assert memcached.get(key.encode()) == path.encode("utf-8")  # no prefix: the old service's key
    assert reader.stats.memcached_hits == 1
    assert fired(reader.get(key)) == path  # and now reader's LRU has it too
    assert reader.stats.lru_hits == 1
    assert writer.stats.errors == reader.stats.errors == 0


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_miss_in_memcached_is_a_miss(memcached: MemcachedPeer, caches: Any) -> None:
    cache = caches([memcached.server])
    assert await cache.get(sha("never stored")) is None
    assert cache.stats == CacheStats(misses=1)


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_unix_socket_server(memcached_peers: Any, caches: Any) -> None:
    peer = memcached_peers(unix=True)
    writer, reader = caches([peer.server]), caches([peer.server])
    key = sha("over a unix socket")
    writer.put(key, "/data/unix")
    await eventually(lambda: reader.get(key), "/data/unix")
    assert peer.get(key.encode()) == b"/data/unix"
    assert reader.stats.errors == 0


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_prefix_keeps_hosts_apart(memcached: MemcachedPeer, caches: Any) -> None:
    host1, host2 = caches([memcached.server], prefix="h1:"), caches([memcached.server], prefix="h2:")
    key = sha("on both hosts")
    host1.put(key, "/host1/data")
    await eventually(lambda: held(memcached, "h1:" + key), b"/host1/data")
    assert await host2.get(key) is None  # host2 does not see host1's path
    host2.put(key, "/host2/data")
    await eventually(lambda: held(memcached, "h2:" + key), b"/host2/data")
    assert memcached.get(key.encode()) is None  # nothing under the bare key
    again1 = caches([memcached.server], prefix="h1:")  # host1 restarted: an empty LRU
    assert await again1.get(key) == "/host1/data"


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_drop_removes_from_lru_and_memcached(memcached: MemcachedPeer, caches: Any) -> None:
    cache = caches([memcached.server])
    key = sha("stale")
    cache.put(key, "/data/gone.dat")
    await eventually(lambda: held(memcached, key), b"/data/gone.dat")
    cache.drop(key)
    assert await cache.get(key) is None  # not the LRU, nor memcached while the delete is on its way
    await eventually(lambda: held(memcached, key), None)
    assert await cache.get(key) is None
    assert cache.stats.hits == 0


@pytest_twisted.ensureDeferred
async def test_no_server_listening_is_a_prompt_miss(caches: Any, transitions: Any) -> None:
    nobody = TcpServer("127.0.0.1", free_port())
    cache = caches([nobody])
    start = time.monotonic()
    assert await cache.get(sha("a")) is None
    assert time.monotonic() - start < PROMPT
    assert cache.stats.servers_down == (nobody.name,)
    assert cache.stats.errors >= 1  # the refused connection
    assert fired(cache.get(sha("b"))) is None  # left alone: answered at once
    assert transitions(cache) == ["down"]


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_killed_memcached_is_a_prompt_miss(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    writer, reader = caches([memcached.server]), caches([memcached.server])
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
    assert fired(reader.get(sha("missing 0"))) is None  # the server is left alone: no wait
    assert reader.stats.errors >= 1
    assert reader.stats.servers_down == (f"127.0.0.1:{memcached.port}",)
    assert transitions(reader) == ["down"]  # once, not once per request


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_values_flow_again_after_a_restart(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    writer, reader = caches([memcached.server]), caches([memcached.server])
    writer.put(sha("before"), "/data/before")
    await eventually(lambda: reader.get(sha("before")), "/data/before")

    memcached.kill()
    assert await reader.get(sha("during")) is None
    writer.put(sha("during"), "/data/during")
    await eventually(lambda: succeed(transitions(reader)), ["down"])  # when reconnecting fails

    memcached.restart()
    key = sha("after")

    async def written_then_read() -> str | None:
        writer.put(key, "/data/after")  # again each time: a put while a server is down is lost
        return await reader.get(key)

    await eventually(written_then_read, "/data/after")
    assert transitions(reader) == ["down", "up"]
    assert reader.stats.servers_down == ()

    async def writer_transitions() -> list[str]:
        return transitions(writer)

    await eventually(writer_transitions, ["down", "up"])


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_connection_closed_by_the_server_is_reopened_quietly(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    cache = caches([memcached.server])
    cache.put(sha("a"), "/data/a")
    await eventually(lambda: held(memcached, sha("a")), b"/data/a")
    memcached.restart()  # between two calls: nothing is in flight

    async def written() -> bytes | None:
        cache.put(sha("b"), "/data/b")
        return memcached.get(sha("b").encode())

    await eventually(written, b"/data/b")
    assert transitions(cache) == []  # not an outage: the server was back at once
    assert cache.stats.servers_down == ()


@pytest_twisted.ensureDeferred
async def test_a_silent_server_is_a_miss_within_the_timeout(caches: Any, transitions: Any) -> None:
    ticks: list[float] = []
    loop = LoopingCall(lambda: ticks.append(time.monotonic()))
    with black_hole() as server:
        cache = caches([server], timeout=0.3)
        loop.start(0.01)
        start = time.monotonic()
        got = await cache.get(sha("anything"))
        elapsed = time.monotonic() - start
        await eventually(lambda: succeed(cache.stats.servers_down), (server.name,))
        later = cache.get(sha("later"))
        cache.put(sha("anything"), "/data/x")  # does not raise either
        loop.stop()
    assert got is None
    assert 0.25 <= elapsed < PROMPT  # the get did wait for the server's timeout, no longer
    assert fired(later) is None  # then the server is left alone: no more waiting
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert len(ticks) >= 10, f"the LoopingCall ticked {len(ticks)} times in {elapsed:.3f} s"
    assert max(gaps) < 0.15, f"the reactor stalled for {max(gaps):.3f} s"
    assert cache.stats.errors >= 2  # the get, and the connection that did not answer
    assert transitions(cache) == ["down"]


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_hung_server_is_a_miss_within_the_timeout_until_it_answers(
    memcached: MemcachedPeer, caches: Any, transitions: Any
) -> None:
    cache = caches([memcached.server], timeout=0.3)
    cache.put(sha("a"), "/data/a")
    await eventually(lambda: held(memcached, sha("a")), b"/data/a")
    memcached.pause()  # the connection stays open; nothing answers on it
    try:
        start = time.monotonic()
        waiting = [cache.get(sha(f"hung {i}")) for i in range(3)]  # pipelined on one connection
        assert await gatherResults(waiting) == [None, None, None]
        assert 0.25 <= time.monotonic() - start < PROMPT  # each waited the timeout, no longer
        assert fired(cache.get(sha("b"))) is None  # then the server is left alone
        assert cache.stats.servers_down == (memcached.server.name,)
    finally:
        memcached.resume()
    await eventually(lambda: succeed(transitions(cache)), ["down", "up"])  # tried again, answered
    assert cache.stats.servers_down == ()
    cache.put(sha("c"), "/data/c")
    await eventually(lambda: held(memcached, sha("c")), b"/data/c")
    assert cache.stats.errors >= 3  # the three gets


@pytest_twisted.ensureDeferred
async def test_too_many_pending_calls_are_skipped(caches: Any) -> None:
    with black_hole() as server:
        cache = caches([server], timeout=0.3, max_pending=2)
        slow = [cache.get(sha(f"slow {i}")) for i in range(2)]
        assert fired(cache.get(sha("one too many"))) is None  # skipped: answered at once
        assert cache.stats.skipped == 1
        assert await gatherResults(slow) == [None, None]


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_a_stopped_cache_answers_from_its_lru(memcached: MemcachedPeer, caches: Any) -> None:
    cache = caches([memcached.server])
    cache.put(sha("a"), "/data/a")
    await eventually(lambda: held(memcached, sha("a")), b"/data/a")
    await cache.stopService()
    assert fired(cache.get(sha("a"))) == "/data/a"
    assert fired(cache.get(sha("b"))) is None  # no memcached call after stop, so no wait
    cache.put(sha("c"), "/data/c")
    cache.drop(sha("a"))
    assert fired(cache.get(sha("a"))) is None
    assert memcached.get(sha("c").encode()) is None


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_keys_spread_over_several_servers(memcached_peers: Any, caches: Any) -> None:
    peers = [memcached_peers(), memcached_peers(unix=True)]
    servers = [p.server for p in peers]
    writer, reader = caches(servers), caches(servers[::-1])
    keys = [sha(str(i)) for i in range(20)]
    for k in keys:
        writer.put(k, f"/data/{k}")
    for k in keys:
        await eventually(lambda: reader.get(k), f"/data/{k}")  # noqa: B023 (awaited at once)
    on_each = [sum(p.get(k.encode()) is not None for k in keys) for p in peers]
    assert sum(on_each) == len(keys) and all(on_each)
