"""Uploads under stress: disconnects, races, unwritable disks, back-pressure."""

import json
import os
import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task
from twisted.internet.defer import DeferredList

from support.helpers import AUTH, dat_files, sha256, temp_files


async def until(condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait for ``condition()`` to hold, checking every 10 ms, failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.01, lambda: None)


def open_upload(server, sha: str, length: int) -> socket.socket:
    """Start a POST by hand and send only its headers."""
    host, port = server.url.split("//")[1].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setblocking(False)
    sock.send(f"POST /{sha} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
              "Authorization: Basic d3JpdGVyOndyaXRlcl9wYXNz\r\n\r\n".encode())
    return sock


@pytest_twisted.ensureDeferred
async def test_client_disconnect_mid_upload_leaves_no_file(server, storage_dirs):
    data = os.urandom(8 * 1024 * 1024)
    sock = open_upload(server, sha256(data), len(data))
    sent = 0
    try:
        # keep sending until the server has started writing a temp file
        while not temp_files(storage_dirs) and sent < len(data) // 2:
            try:
                sent += sock.send(data[sent:sent + 65536])
            except BlockingIOError:
                pass
            await task.deferLater(reactor, 0.001, lambda: None)
        assert temp_files(storage_dirs), "the upload never reached the disk"
    finally:
        sock.close()
    await until(lambda: not temp_files(storage_dirs), what="temp files to be removed")
    assert dat_files(Path(storage_dirs[0][0]).parent) == []
    r = await treq.get(server.at(sha256(data)))
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_truncated_body_is_not_stored(server, storage_dirs):
    data = os.urandom(300_000)
    sock = open_upload(server, sha256(data), len(data) + 1000)  # promises more than it sends
    sock.setblocking(True)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.close()
    await until(lambda: not temp_files(storage_dirs), what="temp files to be removed")
    assert dat_files(Path(storage_dirs[0][0]).parent) == []


@pytest_twisted.ensureDeferred
async def test_two_concurrent_uploads_of_the_same_file_both_succeed(server, storage_dirs):
    data = os.urandom(4 * 1024 * 1024)
    sha = sha256(data)
    results = await DeferredList(
        [treq.post(server.at(sha), data=data, auth=AUTH) for _ in range(2)],
        fireOnOneErrback=True,
    )
    codes = sorted(r.code for _, r in results)
    assert codes == [200, 201]  # one stores it; the other finds it stored, at its commit
    for _, r in results:
        for p in json.loads(await r.text()):
            assert Path(p).read_bytes() == data
    files = dat_files(Path(storage_dirs[0][0]).parent)
    storages = [f.split("/" + sha.upper()[:2] + "/")[0] for f in files]
    assert len(storages) == len(set(storages)), "one file per storage"
    assert temp_files(storage_dirs) == []


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_unwritable_pair_is_skipped_for_a_writable_one(
        start_server, config_dict, storage_dirs, readonly_dir):
    config_dict["storage_pairs"] = [[str(readonly_dir), storage_dirs[0][1]], storage_dirs[1]]
    server = await start_server(config_dict)
    for i in range(5):
        data = b"file %d" % i
        r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
        assert r.code == 201
        assert all(p.startswith(tuple(storage_dirs[1])) for p in json.loads(await r.text()))
    assert dat_files(storage_dirs[0][1]) == []


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_no_writable_storage_is_an_error_and_nothing_partial(
        start_server, config_dict, storage_dirs, readonly_dir):
    config_dict["storage_pairs"] = [[storage_dirs[0][0], str(readonly_dir)]]
    server = await start_server(config_dict)
    data = os.urandom(200_000)
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 500
    assert str(readonly_dir) in r.headers.getRawHeaders("stor-reason")[0]
    assert dat_files(storage_dirs[0][0]) == []
    assert temp_files([[storage_dirs[0][0]]]) == []
