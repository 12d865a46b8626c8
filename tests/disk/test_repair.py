"""Replica repair: a GET that finds one member of a pair without the file brings the
twin back (verified, never partial), in the background, without delaying the GET;
on every read, cache hit or miss."""

import os
from pathlib import Path

import pytest_twisted
import treq

from support.helpers import AUTH, raw_http, sha256, temp_files
from support.helpers import flip


async def stored(server, data: bytes) -> list[str]:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    return await r.json()


@pytest_twisted.async_fixture
async def watched(start_server, config_dict, statsite):
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "r"}
    return await start_server(config_dict)


@pytest_twisted.ensureDeferred
async def test_a_deleted_replica_comes_back_identical_after_a_get(watched, statsite, storage_dirs):
    data = os.urandom(3 * 1024 * 1024 + 1)
    paths = await stored(watched, data)
    for done, gone in enumerate(paths, start=1):  # either member may be the one lost
        os.unlink(gone)
        r = await treq.get(watched.at(sha256(data)))  # the path is cached after the first
        assert r.code == 200 and await r.content() == data
        await statsite.wait_for(r"r\.repair\.done\.count:1\|c", count=done)
        assert Path(gone).read_bytes() == data
    assert temp_files(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_a_corrupt_survivor_is_not_copied(watched, statsite, storage_dirs):
    data = os.urandom(100_000)
    paths = await stored(watched, data)
    os.unlink(paths[1])
    flip(paths[0], 10)
    answer = await raw_http(watched.url, f"GET /{sha256(data)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert data not in answer  # a verified read: cut, never served whole
    await statsite.wait_for(r"r\.repair\.quarantined\.count:1\|c")
    assert not os.path.exists(paths[1])  # nothing was copied from the rotten survivor
    assert not os.path.exists(paths[0])  # it is in quarantine, kept for inspection
    quarantined = list(Path(paths[0].split("/" + sha256(data).upper()[:2] + "/")[0])
                       .joinpath(".stor-quarantine").iterdir())
    assert len(quarantined) == 1
    r = await treq.get(watched.at(sha256(data)))
    assert r.code == 404
    assert temp_files(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_no_repair_onto_a_storage_that_takes_no_new_files(
        start_server, config_dict, storage_dirs, statsite):
    server = await start_server(config_dict)
    data = b"x" * 1000
    paths = await stored(server, data)
    config_dict["writable_pairs_regex"] = "^$"
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "ro"}
    readonly = await start_server(config_dict)
    for path in paths:  # whichever member is gone, no repair may land on it
        os.rename(path, path + ".away")
        r = await treq.get(readonly.at(sha256(data)))
        assert r.code == 200 and await r.content() == data
        os.rename(path + ".away", path)
    await statsite.wait_for(r"ro\.success\.get\.ok_old\..*\.count:1\|c", count=2)
    assert not any(line.startswith("ro.repair.") for line in statsite.lines)
