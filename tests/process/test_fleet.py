"""A fleet end to end (issue 12): stor hosts in front of one bucket on moto's
server (signatures checked; every object read back and hashed).

Write-through (the 201 never waits for S3; the object lands under the read
path's key; 256 MiB with flat memory), an S3 outage across a restart, two
hosts sharing a bucket (``s3_read`` first/fallback, ``s3_fill_local``),
nginx from ``conf/nginx-fleet.conf`` and HAProxy from
``conf/haproxy-fleet.cfg`` in front of two hosts, and hosts sharing a
memcached under their own ``memcached_prefix``.

Hosts run in-process on the test reactor (``start_server``) where only the
HTTP answers matter, and as real ``twistd stor`` processes (``fleet``) where a
stop, a restart or the process's memory is the point.
"""

import hashlib
import http.client
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task

from support.amqp import eventually
from support.helpers import AUTH, sha256
from support.fleet import (
    Host,
    bucket_keys,
    copies,
    eventually_async,
    exited,
    host_config,
    in_bucket,
    peak_rss_kib,
    s3_keys,
    s3_relay,
    wait_in_bucket,
)
from support.harness import AUTH_HEADER, request, wait_for
from support.s3write import MiB, write_big
from stor.core import layout

pytestmark = pytest.mark.acceptance('haproxy', 'memcached', 'moto', 'nginx', 'stor-process')

MOTO_TIMEOUT = 20.0  # s3_timeout of hosts whose S3 is held silent: far longer than any answer


def key_of(sha: str) -> str:
    """The key the read path asks for, spelled out here rather than taken from stor."""
    lower = sha.lower()
    return f"{lower[0:2]}/{lower[2:4]}/{lower[4:6]}/{lower}"


def storages_of(server: Any) -> list[str]:
    return [s for pair in server.config.storage_pairs for s in pair]


async def post(server_url: str, sha: str, data: bytes) -> tuple[int, bytes]:
    r = await treq.post(f"{server_url}/{sha}", data=data, auth=AUTH)
    return r.code, await r.content()


async def get(server_url: str, sha: str) -> tuple[int, bytes]:
    r = await treq.get(f"{server_url}/{sha}")
    return r.code, await r.content()


async def outbox_state(url: str) -> dict[str, Any]:
    r = await treq.get(f"{url}/status", headers={"Accept": "application/json"})
    return (await r.json())["s3_outbox"]


# -- write-through ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_upload_is_answered_while_s3_is_silent_then_lands_under_the_read_key(
        start_server, tmp_path, moto, bucket):
    """The 201 does not wait for S3: every S3 connection is held unanswered, yet the
    upload (SHA spelled upper-case) is answered; once S3 answers, the object lands
    under the lower-case aa/bb/cc/<sha> key with the file's bytes."""
    relay = await s3_relay(moto)
    relay.mode = "hold"
    try:
        server = await start_server(host_config(tmp_path, "a", s3_write_through=True, **s3_keys(
            moto, bucket, relay.endpoint, s3_timeout=MOTO_TIMEOUT)))
        data = os.urandom(100_000)
        sha = sha256(data)
        started = time.monotonic()
        code, body = await post(server.url, sha.upper(), data)
        assert code == 201
        assert time.monotonic() - started < MOTO_TIMEOUT  # no S3 timeout was waited for
        assert len(json.loads(body)) == 2
        await eventually(lambda: relay.requests(sha) >= 1, reactor, 10,
                         what="the outbox's first request, held by the silent S3")
        assert bucket_keys(moto, bucket) == []
        relay.mode = "relay"
        await relay.drop()  # the held request fails; its retry reaches S3
        assert await in_bucket(moto, bucket, sha) == sha
        assert bucket_keys(moto, bucket) == [key_of(sha)]

        async def drained() -> bool:
            return (await outbox_state(server.url))["depth"] == 0

        await eventually_async(drained, "an empty outbox")
        puts = (await outbox_state(server.url))["puts"]
        assert puts["error"] >= 1 and puts["ok"] + puts["present"] == 1
    finally:
        await relay.cut()


def post_file(port: int, sha: str, path: Path, timeout: float = 120.0) -> http.client.HTTPResponse:
    """POST a file, streamed from disk in 1 MiB blocks; the answer (body read)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, blocksize=MiB)
    try:
        with open(path, "rb") as f:
            conn.request("POST", f"/{sha}", body=f, headers={
                "Authorization": AUTH_HEADER, "Content-Length": str(path.stat().st_size)})
            answer = conn.getresponse()
            answer.read()
            return answer
    finally:
        conn.close()


def test_a_256_mib_upload_goes_to_the_bucket_with_flat_memory(fleet, moto, bucket, tmp_path):
    """A real stor process: 201 for 256 MiB, the object lands whole, and the
    process's peak RSS over start, upload and multipart put stays far below it."""
    big = tmp_path / "big"
    sha = write_big(big, 256 * MiB, seed=12)
    host = fleet.start("a", s3_write_through=True, **s3_keys(moto, bucket))
    started = peak_rss_kib(host.pid)
    answer = post_file(host.port, sha, big)
    assert answer.status == 201
    after_upload = peak_rss_kib(host.pid)
    assert wait_in_bucket(moto, bucket, sha, timeout=180) == sha
    assert bucket_keys(moto, bucket) == [key_of(sha)]
    after_put = peak_rss_kib(host.pid)
    measured = (f"VmHWM {started} KiB at start, {after_upload} KiB after the POST, "
                f"{after_put} KiB after the put to S3")
    assert after_put < 150 * 1024, measured
    assert after_put - started < 64 * 1024, measured


# -- an S3 outage across a restart -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_uploads_during_an_s3_outage_reach_s3_after_a_restart(fleet, moto, bucket):
    """S3 unreachable: uploads are answered 201 all the same; stor is stopped
    (SIGTERM) before S3 is back, started again with S3 back: every file lands."""
    relay = await s3_relay(moto)
    await relay.cut()  # connections refused from the start
    try:
        host = fleet.start("a", s3_write_through=True, **s3_keys(
            moto, bucket, relay.endpoint, s3_timeout=5, s3_connect_timeout=1))
        files = [os.urandom(size) for size in (10, 5000, 300_000, 3 * MiB, 70_000)]
        shas = [sha256(data) for data in files]
        for sha, data in zip(shas, files):
            assert (await post(host.url, sha, data))[0] == 201

        async def failing() -> bool:
            state = await outbox_state(host.url)
            return state["depth"] == len(files) and state["consecutive_failures"] >= 2

        await eventually_async(failing, "uploads failing while S3 is down")
        host.proc.popen.terminate()
        assert await exited(host) == 0
        for sha in shas:  # the outbox's markers, on both members of the file's pair
            pair = [s for s in host.storages if os.path.isfile(layout.file_path(s, sha))]
            assert len(pair) == 2
            assert all(os.path.isfile(os.path.join(s, ".stor-outbox", sha)) for s in pair)
        assert bucket_keys(moto, bucket) == []

        await relay.restore()
        fleet.restart(host)
        for sha in shas:
            assert await in_bucket(moto, bucket, sha) == sha
        assert bucket_keys(moto, bucket) == sorted(key_of(sha) for sha in shas)

        async def drained() -> bool:
            return (await outbox_state(host.url))["depth"] == 0

        await eventually_async(drained, "an empty outbox")
        assert not any(os.listdir(os.path.join(s, ".stor-outbox"))
                       for s in host.storages if os.path.isdir(os.path.join(s, ".stor-outbox")))
    finally:
        await relay.cut()


# -- two hosts, one bucket -------------------------------------------------------------


@pytest.mark.parametrize("read_order", ["first", "fallback"])
@pytest_twisted.ensureDeferred
async def test_a_file_uploaded_to_one_host_is_served_by_another(start_server, tmp_path, moto,
                                                                 bucket, read_order):
    writer = await start_server(host_config(tmp_path, "a", s3_write_through=True,
                                            **s3_keys(moto, bucket)))
    reader = await start_server(host_config(tmp_path, "b", s3_enabled=True, s3_read=read_order,
                                            **s3_keys(moto, bucket)))
    data = os.urandom(2 * MiB + 17)
    sha = sha256(data)
    assert (await post(writer.url, sha, data))[0] == 201
    assert await in_bucket(moto, bucket, sha) == sha
    code, body = await get(reader.url, sha)
    assert code == 200 and sha256(body) == sha
    r = await treq.head(f"{reader.url}/{sha}")
    assert r.code == 200 and r.headers.getRawHeaders("content-length") == [str(len(data))]
    assert copies(storages_of(reader), sha) == []  # served from the bucket, not copied


@pytest_twisted.ensureDeferred
async def test_fallback_serves_local_files_without_s3_and_asks_s3_on_a_miss(
        start_server, tmp_path, moto, bucket):
    relay = await s3_relay(moto)
    try:
        server = await start_server(host_config(tmp_path, "b", s3_enabled=True, s3_read="fallback",
                                                **s3_keys(moto, bucket,
                                                          relay.endpoint,
                                                          s3_timeout=MOTO_TIMEOUT)))
        local = b"stored on this host only\n" * 100
        assert (await post(server.url, sha256(local), local))[0] == 201
        remote = os.urandom(300_000)
        moto.put(bucket, key_of(sha256(remote)), remote)

        relay.mode = "hold"  # S3 down: it takes connections and never answers
        started = time.monotonic()
        assert await get(server.url, sha256(local)) == (200, local)
        assert time.monotonic() - started < MOTO_TIMEOUT / 2
        assert relay.requests(sha256(local)) == 0  # S3 was not even asked

        relay.mode = "relay"
        assert await get(server.url, sha256(remote)) == (200, remote)
        assert relay.requests(sha256(remote)) >= 1  # a local miss asks S3
        assert copies(storages_of(server), sha256(remote)) == []

        await relay.cut()  # S3 refuses connections: a miss cannot be a 404 (issue 20)
        nowhere = sha256(b"stored nowhere")
        assert await get(server.url, nowhere) == (
            503, f"S3 unavailable: '{nowhere}' not found locally\n".encode())
        assert await get(server.url, sha256(local)) == (200, local)
    finally:
        await relay.cut()


# -- s3_fill_local ---------------------------------------------------------------------


@pytest.mark.parametrize("read_order", ["first", "fallback"])
@pytest_twisted.ensureDeferred
async def test_a_file_served_from_s3_is_filled_to_a_local_pair_and_then_served_without_s3(
        start_server, tmp_path, moto, bucket, read_order):
    relay = await s3_relay(moto)
    try:
        server = await start_server(host_config(
            tmp_path, "b", s3_enabled=True, s3_read=read_order, s3_fill_local=True,
            **s3_keys(moto, bucket, relay.endpoint, s3_timeout=5)))
        data = os.urandom(3 * MiB + 5)
        sha = sha256(data)
        moto.put(bucket, key_of(sha), data)
        assert copies(storages_of(server), sha) == []
        assert await get(server.url, sha) == (200, data)

        pairs = [list(pair) for pair in server.config.storage_pairs]
        await eventually(lambda: copies(storages_of(server), sha) in pairs, reactor, 20,
                         what="the file on both members of a pair")
        for storage in copies(storages_of(server), sha):
            with open(layout.file_path(storage, sha), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == sha

        await relay.cut()  # S3 down: the local copy answers
        asked = relay.requests(sha)
        assert await get(server.url, sha) == (200, data)
        if read_order == "fallback":
            assert relay.requests(sha) == asked
    finally:
        await relay.cut()


# -- a shared memcached ----------------------------------------------------------------


async def cached_path(memcached: Any, key: str, where: list[str]) -> str:
    """What memcached holds under ``key`` once it is a path into one of ``where``."""
    found: list[str] = []

    def holds() -> bool:
        value = memcached.get(key.encode())
        found[:] = [value.decode()] if value else []
        return bool(found) and any(found[0].startswith(s + os.sep) for s in where)

    await eventually(holds, reactor, 10, what=f"memcached {key} -> a path in {where}")
    return found[0]


@pytest_twisted.ensureDeferred
async def test_hosts_sharing_a_memcached_keep_their_paths_apart(start_server, tmp_path,
                                                               memcached):
    servers = [f"127.0.0.1:{memcached.port}"]
    a = await start_server(host_config(tmp_path, "a", memcached_servers=servers,
                                       memcached_prefix="hostA:"))
    b = await start_server(host_config(tmp_path, "b", memcached_servers=servers,
                                       memcached_prefix="hostB:"))
    only_a = b"stored on host a only"
    both = b"stored on both hosts"
    assert (await post(a.url, sha256(only_a), only_a))[0] == 201
    for server in (a, b):
        assert (await post(server.url, sha256(both), both))[0] == 201
        assert await get(server.url, sha256(both)) == (200, both)
    assert await get(a.url, sha256(only_a)) == (200, only_a)

    path_a = await cached_path(memcached, "hostA:" + sha256(only_a), storages_of(a))
    both_a = await cached_path(memcached, "hostA:" + sha256(both), storages_of(a))
    both_b = await cached_path(memcached, "hostB:" + sha256(both), storages_of(b))
    assert memcached.get(sha256(both).encode()) is None  # nothing under the old bare keys

    assert (await get(b.url, sha256(only_a)))[0] == 404  # b does not have it
    assert await get(b.url, sha256(both)) == (200, both)
    assert memcached.get(("hostB:" + sha256(only_a)).encode()) is None
    assert memcached.get(("hostA:" + sha256(only_a)).encode()).decode() == path_a
    assert memcached.get(("hostA:" + sha256(both)).encode()).decode() == both_a
    assert memcached.get(("hostB:" + sha256(both)).encode()).decode() == both_b


@pytest_twisted.ensureDeferred
async def test_without_prefixes_hosts_overwrite_each_others_paths(start_server, tmp_path,
                                                                  memcached):
    """Why the prefix: sharing the bare keys, each host's lookup replaces the other's path."""
    servers = [f"127.0.0.1:{memcached.port}"]
    a = await start_server(host_config(tmp_path, "a", memcached_servers=servers))
    b = await start_server(host_config(tmp_path, "b", memcached_servers=servers))
    data = b"stored on both hosts"
    sha = sha256(data)
    for server in (a, b):
        assert (await post(server.url, sha, data))[0] == 201
    assert await get(a.url, sha) == (200, data)
    await cached_path(memcached, sha, storages_of(a))
    assert await get(b.url, sha) == (200, data)
    await cached_path(memcached, sha, storages_of(b))  # a's path is gone


# -- balancers in front of the fleet -------------------------------------------------------


def host_of(hosts: list[Host], paths: list[str]) -> Host:
    """The host whose storages hold ``paths`` (a 201's or 200's JSON list)."""
    owners = [h for h in hosts if all(any(p.startswith(s + os.sep) for s in h.storages)
                                      for p in paths)]
    assert len(owners) == 1, f"{paths} on {[h.name for h in owners]}"
    return owners[0]


def get_sha(port: int, sha: str, timeout: float = 60.0) -> tuple[int, str, int]:
    """GET through ``port``: (status, SHA-256 of the body, its length), read in chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", f"/{sha}")
        answer = conn.getresponse()
        h, size = hashlib.sha256(), 0
        while chunk := answer.read(MiB):
            h.update(chunk)
            size += len(chunk)
        return answer.status, h.hexdigest(), size
    finally:
        conn.close()


def served(host: Host, sha: str) -> int:
    """How many GETs of ``sha`` ``host`` answered 200, by its access log."""
    return sum(1 for r in host.proc.access()
               if (r["method"], r["sha"], r["status"]) == ("GET", sha, 200))


def spooled(hosts: list[Host]) -> int:
    """The bytes in every host's upload temp files right now."""
    total = 0
    for h in hosts:
        for s in h.storages:
            tmp = Path(s) / layout.TEMP_DIR
            if tmp.is_dir():
                total += sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
    return total


def test_nginx_from_the_shipped_config_fronts_two_hosts(fleet, nginx, moto, bucket, tmp_path):
    keys = s3_keys(moto, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    hosts = [fleet.start("a", **keys), fleet.start("b", **keys)]
    lb = nginx([h.port for h in hosts])

    small = os.urandom(50_000)
    sha = sha256(small)
    answer = request(lb.port, "POST", f"/{sha}", small, {"Authorization": AUTH_HEADER})
    assert answer.status == 201, answer
    owner = host_of(hosts, json.loads(answer.body))
    other = next(h for h in hosts if h is not owner)
    # The same SHA goes to the same host: read after write, before the bucket has it.
    assert request(lb.port, "GET", f"/{sha}").body == small
    wait_for(lambda: served(owner, sha) == 1, f"{owner.name} logging the GET", owner.proc)

    big = tmp_path / "big"
    big_sha = write_big(big, 24 * MiB, seed=5)
    assert post_file(lb.port, big_sha, big).status == 201
    assert get_sha(lb.port, big_sha) == (200, big_sha, 24 * MiB)

    assert wait_in_bucket(moto, bucket, sha) == sha
    assert wait_in_bucket(moto, bucket, big_sha) == big_sha

    assert fleet.stop(owner) == 0  # the host that took the file is gone: the other serves it
    answer = request(lb.port, "GET", f"/{sha}")
    assert (answer.status, answer.body) == (200, small)
    assert request(lb.port, "HEAD", f"/{sha}").status == 200
    wait_for(lambda: served(other, sha) == 1, f"{other.name} logging the GET", other.proc)
    assert served(owner, sha) == 1

    # Uploads go on: whatever the hash picks, the host left takes them.
    for i in range(6):
        data = f"uploaded while {owner.name} is down: {i}\n".encode() * 100
        answer = request(lb.port, "POST", f"/{sha256(data)}", data, {"Authorization": AUTH_HEADER})
        assert answer.status == 201, answer
        assert host_of(hosts, json.loads(answer.body)) is other


def test_an_upload_through_nginx_reaches_stor_while_it_is_sent(fleet, nginx, moto, bucket,
                                                              tmp_path):
    """proxy_request_buffering off: stor spools the body as nginx gets it, so the
    balancer holds none of it (and stor's 201 follows the last byte at once)."""
    keys = s3_keys(moto, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    hosts = [fleet.start("a", **keys), fleet.start("b", **keys)]
    lb = nginx([h.port for h in hosts])
    data = os.urandom(8 * MiB)
    sha = sha256(data)
    with socket.create_connection(("127.0.0.1", lb.port), timeout=30) as sock:
        sock.sendall(f"POST /{sha} HTTP/1.1\r\nHost: fleet\r\nAuthorization: {AUTH_HEADER}\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode())
        sock.sendall(data[:4 * MiB])
        wait_for(lambda: spooled(hosts) >= 2 * MiB, "half the upload at stor, the rest unsent")
        sock.sendall(data[4 * MiB:])
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 201
        host_of(hosts, json.loads(answer.read()))
    assert get_sha(lb.port, sha) == (200, sha, len(data))


def test_haproxy_from_the_shipped_config_leaves_out_a_host_that_is_not_ready(
        fleet, haproxy, moto, bucket):
    """Active checks on /health/ready: a host whose disks fail (still running, still
    answering) is marked down and its files are served by the other from the bucket;
    once its disks are back, it is up again and serves its share."""
    keys = s3_keys(moto, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback")
    hosts = [fleet.start("a", **keys), fleet.start("b", **keys)]
    lb = haproxy([h.port for h in hosts])
    wait_for(lambda: lb.servers() == {"stor1": "UP", "stor2": "UP"}, "both hosts up")

    data = os.urandom(80_000)
    sha = sha256(data)
    answer = request(lb.port, "POST", f"/{sha}", data, {"Authorization": AUTH_HEADER})
    assert answer.status == 201, answer
    owner = host_of(hosts, json.loads(answer.body))
    other = next(h for h in hosts if h is not owner)
    name = f"stor{hosts.index(owner) + 1}"
    assert request(lb.port, "GET", f"/{sha}").body == data
    wait_for(lambda: served(owner, sha) == 1, f"{owner.name} logging the GET", owner.proc)
    assert wait_in_bucket(moto, bucket, sha) == sha

    lost = [owner.storages[0], owner.storages[2]]  # one member of each pair
    for storage in lost:
        os.rename(storage, storage + ".lost")
    assert request(owner.port, "GET", "/health/ready").status == 503
    wait_for(lambda: lb.servers()[name] == "DOWN", f"{owner.name} marked down", timeout=20)
    answer = request(lb.port, "GET", f"/{sha}")
    assert (answer.status, answer.body) == (200, data)
    wait_for(lambda: served(other, sha) == 1, f"{other.name} logging the GET", other.proc)

    for storage in lost:
        os.rename(storage + ".lost", storage)
    wait_for(lambda: lb.servers()[name] == "UP", f"{owner.name} up again", timeout=20)
    assert request(lb.port, "GET", f"/{sha}").body == data
    wait_for(lambda: served(owner, sha) == 2, f"{owner.name} serving its share again",
             owner.proc)
