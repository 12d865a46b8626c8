"""Replica repair: a GET that finds one member of a pair without the file brings the
twin back (verified, never partial), in the background, without delaying the GET."""

import os
import time
from pathlib import Path

import pytest_twisted
import treq
from twisted.internet import reactor, task

from conftest import AUTH, sha256, temp_files


async def until(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await task.deferLater(reactor, 0.01, lambda: None)


async def stored(server, data: bytes) -> list[str]:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    return await r.json()


@pytest_twisted.ensureDeferred
async def test_a_deleted_replica_comes_back_identical_after_a_get(server, storage_dirs):
    data = os.urandom(3 * 1024 * 1024 + 1)
    paths = await stored(server, data)
    for gone in paths:  # either member may be the one lost
        os.unlink(gone)
        r = await treq.get(server.at(sha256(data)))
        assert r.code == 200 and await r.content() == data
        await until(lambda gone=gone: os.path.exists(gone), what=f"{gone} to come back")
        await server.app.repairer.idle()
        assert Path(gone).read_bytes() == data
        server.app.cache.drop(sha256(data))  # the next GET looks the file up again
    assert temp_files(storage_dirs) == []
    assert server.app.repairer.repaired == 2


@pytest_twisted.ensureDeferred
async def test_a_corrupt_survivor_is_not_copied(server, storage_dirs):
    data = os.urandom(100_000)
    paths = await stored(server, data)
    os.unlink(paths[1])
    with open(paths[0], "r+b") as f:  # flip a byte in the survivor
        f.seek(10)
        byte = f.read(1)
        f.seek(10)
        f.write(bytes([byte[0] ^ 0xFF]))
    r = await treq.get(server.at(sha256(data)))
    await r.content()
    await until(lambda: server.app.repairer.failed == 1, what="the refused repair")
    assert not os.path.exists(paths[1])
    assert temp_files(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_no_repair_onto_a_storage_that_takes_no_new_files(
        start_server, config_dict, storage_dirs):
    server = await start_server(config_dict)
    data = b"x" * 1000
    paths = await stored(server, data)
    config_dict["writable_pairs_regex"] = "^$"
    readonly = await start_server(config_dict)
    os.unlink(paths[1])
    r = await treq.get(readonly.at(sha256(data)))
    assert r.code == 200
    await readonly.app.repairer.idle()
    assert not os.path.exists(paths[1]) and readonly.app.repairer.repaired == 0
