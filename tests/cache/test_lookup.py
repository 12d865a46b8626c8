"""GET through the lookup cache (docs/SPEC.md §4) with a real memcached: hits skip the disk
lookup, an outage is a miss, a stale path is dropped and looked up again."""

import os
import socket

from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task
import treq

from support.helpers import AUTH, sha256
from stor.core import layout

pytestmark = pytest.mark.acceptance('memcached')


@pytest_twisted.async_fixture
async def cached(start_server, config_dict, memcached, statsite):  # noqa: F811
    config_dict["memcached_servers"] = ["%s:%d" % memcached.address]
    config_dict["memcached_timeout"] = 0.2
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "c"}
    return await start_server(config_dict)


async def store(server, data: bytes) -> list[str]:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    return await r.json()


async def get(server, sha: str) -> tuple[int, bytes]:
    r = await treq.get(server.at(sha))
    return r.code, await r.content()


def lookups(statsite) -> int:
    """Full lookups over the pairs for reads so far: each one sends a ``lookup.time``,
    and so does each upload's duplicate lookup (one per ``request.post.count``)."""
    def sent(prefix: str) -> int:
        return sum(line.startswith(prefix) for line in statsite.lines)
    return sent("c.lookup.time:") - sent("c.request.post.count:")


def memcached_value(address: tuple[str, int], key: str) -> str | None:
    """What memcached holds under ``key`` (asked over its text protocol)."""
    with socket.create_connection(address, timeout=2) as s:
        s.sendall(f"get {key}\r\n".encode())
        data = b""
        while not data.endswith(b"END\r\n"):
            data += s.recv(4096)
    lines = data.split(b"\r\n")
    return lines[1].decode() if lines[0].startswith(b"VALUE") else None


@pytest_twisted.ensureDeferred
async def test_a_repeated_get_does_not_repeat_the_disk_lookup(cached, statsite):  # noqa: F811
    data = os.urandom(10_000)
    await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    await statsite.wait_for(r"c\.cache\.miss:1\|c")
    await statsite.wait_for(r"c\.lookup\.time:[0-9.]+\|ms")
    for _ in range(5):
        assert await get(cached, sha256(data)) == (200, data)
    await statsite.wait_for(r"c\.cache\.hit:1\|c", count=5)
    assert lookups(statsite) == 1


@pytest_twisted.ensureDeferred
async def test_a_second_process_finds_the_path_in_memcached(start_server, config_dict, cached,
                                                           statsite):
    data = os.urandom(1000)
    await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "other"}
    # its first get waits for the first connection: on a busy machine that can take
    # longer than the 0.2 s the other tests use to see a hung server
    config_dict["memcached_timeout"] = 5.0
    other = await start_server(config_dict)  # same memcached, empty in-process cache
    assert await get(other, sha256(data)) == (200, data)
    await statsite.wait_for(r"other\.cache\.hit:1\|c")
    assert not any(line.startswith("other.lookup.time:") for line in statsite.lines)


@pytest_twisted.ensureDeferred
async def test_memcached_killed_mid_test_requests_still_succeed(cached, memcached):  # noqa: F811
    files = [os.urandom(2000) for _ in range(3)]
    for data in files:
        await store(cached, data)
        assert await get(cached, sha256(data)) == (200, data)
    memcached.kill()
    for data in files + [os.urandom(10)]:
        code, body = await get(cached, sha256(data))
        assert code in (200, 404)
        if code == 200:
            assert body == data
    new = os.urandom(3000)
    await store(cached, new)
    assert await get(cached, sha256(new)) == (200, new)


@pytest_twisted.ensureDeferred
async def test_file_deleted_behind_a_cached_path_is_served_from_its_twin(cached, memcached,
                                                                        statsite):
    data = os.urandom(5000)
    paths = await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    await statsite.wait_for(r"c\.lookup\.time:[0-9.]+\|ms")
    cached_path = None
    for _ in range(200):  # the set reaches memcached just after the answer
        cached_path = memcached_value(memcached.address, sha256(data))
        if cached_path is not None:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert cached_path in paths
    os.unlink(cached_path)
    assert await get(cached, sha256(data)) == (200, data)  # from the twin
    await statsite.wait_for(r"c\.lookup\.time:[0-9.]+\|ms", count=3)  # the POST's, two GETs'
    assert lookups(statsite) == 2
    await statsite.wait_for(r"c\.repair\.done\.count:1\|c")  # the GET brought it back
    assert Path(cached_path).read_bytes() == data
    for path in paths:  # now both go: the cached path is stale and the lookup finds nothing
        os.unlink(path)
    code, _ = await get(cached, sha256(data))
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_head_uses_the_cache_too(cached, statsite):
    data = os.urandom(500)
    paths = await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    r = await treq.head(cached.at(sha256(data)))
    assert r.code == 200
    await statsite.wait_for(r"c\.cache\.hit:1\|c")
    assert lookups(statsite) == 1
    assert layout.relative_path(sha256(data)) in paths[0]
