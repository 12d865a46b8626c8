"""GET through the lookup cache (SPEC §4) with a real memcached: hits skip the disk
lookup, an outage is a miss, a stale path is dropped and looked up again."""

import os

import pytest_twisted
import treq

from conftest import AUTH, sha256
from stor.core import layout


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


@pytest_twisted.ensureDeferred
async def test_a_repeated_get_does_not_repeat_the_disk_lookup(cached, statsite):  # noqa: F811
    data = os.urandom(10_000)
    await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    assert cached.app.lookups == 1
    await statsite.wait_for(r"c\.cache\.miss:1\|c")
    for _ in range(5):
        assert await get(cached, sha256(data)) == (200, data)
    assert cached.app.lookups == 1
    await statsite.wait_for(r"c\.cache\.hit:1\|c")
    await statsite.wait_for(r"c\.cache\.time:[0-9.]+\|ms")
    assert sum(line.startswith("c.lookup.time:") for line in statsite.lines) == 1


@pytest_twisted.ensureDeferred
async def test_a_second_process_finds_the_path_in_memcached(start_server, config_dict, cached):
    data = os.urandom(1000)
    await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    other = await start_server(config_dict)  # same memcached, empty in-process cache
    assert await get(other, sha256(data)) == (200, data)
    assert other.app.lookups == 0


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
async def test_file_deleted_behind_a_cached_path_is_served_from_its_twin(cached):
    data = os.urandom(5000)
    paths = await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    cached_path = await cached.app.cache.get(sha256(data))
    assert cached_path in paths
    os.unlink(cached_path)
    assert await get(cached, sha256(data)) == (200, data)  # from the twin
    assert cached.app.lookups == 2
    await cached.app.repairer.idle()  # the GET also brought the deleted replica back
    assert os.path.exists(cached_path)
    for path in paths:  # now both go: the cached path is stale and the lookup finds nothing
        os.unlink(path)
    code, _ = await get(cached, sha256(data))
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_head_uses_the_cache_too(cached):
    data = os.urandom(500)
    paths = await store(cached, data)
    assert await get(cached, sha256(data)) == (200, data)
    r = await treq.head(cached.at(sha256(data)))
    assert r.code == 200
    assert cached.app.lookups == 1
    assert layout.relative_path(sha256(data)) in paths[0]
