"""statsite lines on a real UDP socket: the old service's key names, values and types."""

import os

import pytest_twisted
import treq

from support.helpers import AUTH, sha256


@pytest_twisted.async_fixture
async def metered(start_server, config_dict, statsite):
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "stor.test",
                               "sample_rate": 1}
    return await start_server(config_dict)


N = r"[0-9.]+"


@pytest_twisted.ensureDeferred
async def test_post_201_then_duplicate(metered, statsite):
    data = os.urandom(1000)
    r = await treq.post(metered.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    await statsite.wait_for(r"stor\.test\.request\.post\.count:1\|c")
    await statsite.wait_for(r"stor\.test\.success\.post\.write\.count:1\|c")
    # each line ends in a newline, as the old client's did; a datagram holds whole lines
    # (those of up to FLUSH_DELAY: statsite reads every line of a datagram)
    assert any(b"stor.test.request.post.count:1|c\n" in d.splitlines(True)
               for d in statsite.datagrams)
    assert all(d.endswith(b"\n") for d in statsite.datagrams)
    r = await treq.post(metered.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 200
    await statsite.wait_for(r"stor\.test\.success\.post\.duplicate\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_post_412_bad_sha_and_malformed(metered, statsite):
    r = await treq.post(metered.at("ab" * 32), data=b"other", auth=AUTH)
    assert r.code == 412
    await statsite.wait_for(r"stor\.test\.error\.post\.bad_sha\.count:1\|c")
    r = await treq.post(metered.at("nope"), data=b"other", auth=AUTH)
    assert r.code == 412
    await statsite.wait_for(r"stor\.test\.error\.post\.malformed_sha\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_post_507_counts_no_space(start_server, config_dict, statsite):
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "p"}
    config_dict["writable_pairs_regex"] = "^$"
    server = await start_server(config_dict)
    r = await treq.post(server.at(sha256(b"x")), data=b"x", auth=AUTH)
    assert r.code == 507
    await statsite.wait_for(r"p\.error\.post\.no_space\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_get_hit_names_the_storage_and_times_it(metered, statsite, storage_dirs):
    data = os.urandom(5000)
    r = await treq.post(metered.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    r = await treq.get(metered.at(sha256(data)))
    assert await r.content() == data
    server = r"tmp-pytest-of-[a-z]+-pytest-[0-9]+-[A-Za-z0-9-]+-data[1-4]"
    await statsite.wait_for(r"stor\.test\.request\.get\.count:1\|c")
    await statsite.wait_for(rf"stor\.test\.success\.get\.ok_old\.{server}\.count:1\|c")
    await statsite.wait_for(rf"stor\.test\.success\.get\.ok_old\.{server}\.size:5000\|c")
    await statsite.wait_for(rf"stor\.test\.success\.get\.ok_old\.{server}\.time:{N}\|ms")
    await statsite.wait_for(rf"stor\.test\.lookup\.time:{N}\|ms")
    await statsite.wait_for(r"stor\.test\.lookup\.attempt\.[1-4]\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_get_miss_and_malformed(metered, statsite):
    r = await treq.get(metered.at("0" * 64))
    assert r.code == 404
    await statsite.wait_for(r"stor\.test\.error\.get\.not_found_old\.count:1\|c")
    r = await treq.get(metered.at("zz"))
    assert r.code == 404
    await statsite.wait_for(r"stor\.test\.error\.get\.malformed_sha\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_status_counts_healthchecks(metered, statsite):
    r = await treq.get(metered.at("status"))
    assert r.code == 200
    await statsite.wait_for(r"stor\.test\.healthcheck\.count:1\|c")


@pytest_twisted.ensureDeferred
async def test_unreachable_statsite_does_not_affect_requests(start_server, config_dict):
    config_dict["statsite"] = {"host": "127.0.0.1:9", "prefix": "x"}  # nothing listens
    server = await start_server(config_dict)
    for _ in range(3):
        r = await treq.get(server.at("status"))
        assert r.code == 200
