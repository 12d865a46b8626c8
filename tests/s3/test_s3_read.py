"""GET/HEAD through stor with S3 read-through (docs/SPEC.md §3) against moto's server:
S3 first, local storages when S3 lacks the file or fails, never a wrong body."""

import hashlib
import os
import threading
import time

import pytest
import pytest_twisted
import treq
from twisted.internet import threads

from support.helpers import AUTH, raw_http, sha256
from support.s3 import black_hole, refused_port
from stor.core import layout

pytestmark = pytest.mark.acceptance('moto')

MiB = 1024 * 1024
from rgw_peer import moto_then_rgw


@pytest.fixture(params=["moto", "rgw"])
def moto(request, moto):
    """These tests hold on moto's server and on a real S3, Ceph RGW (tests/rgw_peer.py)."""
    return moto_then_rgw(request, moto)


def s3_config(config_dict, endpoint: str, bucket: str, moto, timeout: float = 5.0):
    config_dict.update({
        "s3_enabled": True,
        "s3_credentials": {"access_key": moto.access_key, "secret_key": moto.secret_key,
                           "host": endpoint},
        "s3_bucket": bucket,
        "s3_connect_timeout": timeout,
        "s3_timeout": timeout,
    })
    return config_dict


@pytest_twisted.async_fixture
async def s3_server(start_server, config_dict, moto, bucket, statsite):  # noqa: F811
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "s"}
    return await start_server(s3_config(config_dict, moto.endpoint, bucket, moto))


def put(moto, bucket: str, data: bytes, sha: str | None = None) -> str:
    sha = sha or sha256(data)
    moto.put(bucket, layout.s3_key(sha), data)
    return sha


def head_of(answer: bytes) -> dict[str, str]:
    lines = answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    h = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    h[":status"] = lines[0].split()[1]
    return h


async def local_copy(server, data: bytes) -> None:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201


@pytest_twisted.ensureDeferred
async def test_object_only_in_s3_is_served_with_s3s_headers(s3_server, moto, bucket, statsite):
    data = os.urandom(300_000)
    sha = put(moto, bucket, data)
    s3_headers = moto.head(bucket, layout.s3_key(sha))
    answer = await raw_http(s3_server.url, f"GET /{sha} HTTP/1.1\r\nHost: x\r\n"
                                           "Connection: close\r\n\r\n".encode())
    h = head_of(answer)
    assert h[":status"] == "200"
    assert h["content-length"] == str(len(data))
    assert h["last-modified"] == s3_headers["last-modified"]
    assert h["etag"] == f'"{sha}"'
    assert answer.split(b"\r\n\r\n", 1)[1] == data
    await statsite.wait_for(r"s\.success\.get\.ok_hcp\.count:1\|c")
    await statsite.wait_for(r"s\.success\.get\.ok_hcp\.size:300000\|c")
    await statsite.wait_for(r"s\.success\.get\.ok_hcp\.time:[0-9.]+\|ms")
    r = await treq.head(s3_server.at(sha))
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_absent_from_s3_but_local_is_served_from_local(s3_server, statsite):
    data = b"only on the local disks"
    await local_copy(s3_server, data)
    r = await treq.get(s3_server.at(sha256(data)))
    assert r.code == 200 and await r.content() == data
    await statsite.wait_for(r"s\.error\.get\.not_found_hcp\.count:1\|c")
    r = await treq.get(s3_server.at("0" * 64))
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_s3_refusing_connections_falls_back_to_local(start_server, config_dict, moto, bucket):
    server = await start_server(s3_config(config_dict, f"127.0.0.1:{refused_port()}", bucket, moto))
    data = b"local when S3 is down"
    await local_copy(server, data)
    r = await treq.get(server.at(sha256(data)))
    assert r.code == 200 and await r.content() == data


@pytest_twisted.ensureDeferred
async def test_s3_never_answering_falls_back_to_local_after_the_timeout(
        start_server, config_dict, moto, bucket):
    with black_hole() as port:
        server = await start_server(s3_config(config_dict, f"127.0.0.1:{port}", bucket, moto,
                                              timeout=0.5))
        data = b"local when S3 hangs"
        await local_copy(server, data)
        started = time.monotonic()
        r = await treq.get(server.at(sha256(data)))
        assert r.code == 200 and await r.content() == data
        assert time.monotonic() - started >= 0.45


@pytest_twisted.ensureDeferred
async def test_a_mismatched_object_is_never_delivered_whole(s3_server, moto, bucket):
    data = os.urandom(2 * MiB)
    sha = put(moto, bucket, b"not the right bytes" + data[19:], sha256(data))
    answer = await raw_http(s3_server.url, f"GET /{sha} HTTP/1.1\r\nHost: x\r\n"
                                           "Connection: close\r\n\r\n".encode())
    h = head_of(answer)
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert h[":status"] == "200" and int(h["content-length"]) == len(data)
    assert len(body) < len(data), "a wrong body must be cut short"
    await local_copy(s3_server, data)  # stor no longer asks S3 for it: the local copy is served
    r = await treq.get(s3_server.at(sha))
    assert r.code == 200 and await r.content() == data


@pytest_twisted.ensureDeferred
async def test_ranges_and_etags_on_s3_objects(s3_server, moto, bucket):
    data = os.urandom(500_000)
    sha = put(moto, bucket, data)
    answer = await raw_http(s3_server.url, f"GET /{sha} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199"
                                           "\r\nConnection: close\r\n\r\n".encode())
    h = head_of(answer)
    assert h[":status"] == "206"
    assert h["content-range"] == f"bytes 100-199/{len(data)}"
    assert answer.split(b"\r\n\r\n", 1)[1] == data[100:200]
    answer = await raw_http(s3_server.url, f'GET /{sha} HTTP/1.1\r\nHost: x\r\nIf-None-Match: '
                                           f'"{sha}"\r\nConnection: close\r\n\r\n'.encode())
    assert head_of(answer)[":status"] == "304"
    answer = await raw_http(s3_server.url, f"GET /{sha} HTTP/1.1\r\nHost: x\r\nRange: bytes=600000-"
                                           "\r\nConnection: close\r\n\r\n".encode())
    assert head_of(answer)[":status"] == "416"


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest_twisted.ensureDeferred
async def test_a_100_mib_object_streams_with_flat_memory(s3_server, moto, bucket, tmp_path):
    path = tmp_path / "big"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(100):
            chunk = os.urandom(MiB)
            digest.update(chunk)
            f.write(chunk)
    sha = digest.hexdigest()
    with open(path, "rb") as f:
        await threads.deferToThread(moto.put, bucket, layout.s3_key(sha), f)
    before = _rss_kib()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _rss_kib())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = await treq.get(s3_server.at(sha), unbuffered=True)
        received = hashlib.sha256()
        count = [0]

        def collect(chunk: bytes) -> None:
            received.update(chunk)
            count[0] += len(chunk)

        await treq.collect(r, collect)
    finally:
        stop.set()
        sampler.join()
    assert count[0] == 100 * MiB and received.hexdigest() == sha
    assert (peak[0] - before) < 40 * 1024, f"RSS grew by {(peak[0] - before) // 1024} MiB"
