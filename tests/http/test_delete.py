"""DELETE /<sha> (docs/SPEC.md §9, issue 11) through real HTTP on real files.

Order of checks: no ``delete_auth`` → 405; malformed → 404; missing or wrong
credentials → 401; not stored → 404; removed from every storage (and S3 when
configured) → 204; a member that cannot delete → 500 naming it.  The SHA's
host-wide lock is held while the copies go, and an upload still receiving its
body when the DELETE came is not stored afterwards.
"""

import base64
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from botocore.exceptions import ClientError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from support.helpers import AUTH, dat_files, raw_request, sha256
from support.harness import AUTH_HEADER, request, wait_for
from support.s3 import refused_port
from stor.core import layout
from stor.disk.locks import ShaLocks
from support.rgw import moto_then_rgw


@pytest.fixture(params=["moto", "rgw"])
def moto(request, moto):
    """These tests hold on moto's server and on a real S3, Ceph RGW (tests/support/rgw.py)."""
    return moto_then_rgw(request, moto)


DELETER = ("admin", "admin_pass")
DATA = b"a file someone wants gone\n" * 500
SHA = sha256(DATA)
NOT_FOUND = "Caught failure::stor::filenotfound: File '{}' not found\n"
MALFORMED = "Caught failure::stor::filenotfound: Given hash '{}' isn't SHA256\n"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def statsite_at(statsite: Any) -> dict[str, Any]:
    return {"host": f"127.0.0.1:{statsite.port}", "prefix": "s"}


@pytest.fixture
def delete_config(config_dict: dict[str, Any], statsite: Any) -> dict[str, Any]:
    config_dict["delete_auth"] = ":".join(DELETER)
    config_dict["statsite"] = statsite_at(statsite)
    return config_dict


@pytest_twisted.async_fixture
async def deleter(start_server, delete_config):
    """stor with delete_auth and statsite."""
    return await start_server(delete_config)


async def upload(server: Any, data: bytes = DATA) -> list[str]:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201, await r.text()
    return json.loads(await r.text())


async def delete(server: Any, segment: str, auth: tuple[str, str] | None = DELETER,
                 headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
    """DELETE through a bare Agent, so that what the server sent is what we see."""
    sent = dict(headers or {})
    if auth is not None:
        sent["Authorization"] = basic(*auth)
    return await raw_request("DELETE", server.at(segment), sent)


def header(response: Any, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v
            for v in response.headers.getRawHeaders(name, [])]


def every_dat(storage_dirs: list[list[str]]) -> list[str]:
    return [p for pair in storage_dirs for s in pair for p in dat_files(s)]


def place(storage: str, data: bytes) -> str:
    """A copy where the layout puts it, by hand (a stray copy, an old service's file)."""
    path = layout.file_path(storage, sha256(data))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(data)
    return path


def storage_of(path: str) -> str:
    storage = layout.storage_of(path, SHA)
    assert storage is not None
    return storage


# -- not enabled -------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_without_delete_auth_delete_is_405_and_allow_does_not_offer_it(
        server, storage_dirs):
    paths = await upload(server)
    for segment, auth in [(SHA, DELETER), (SHA, AUTH), (SHA, None), ("not-a-sha", None)]:
        r, body = await delete(server, segment, auth)
        assert r.code == 405, (segment, auth)
        assert body == b"Method Not Allowed\n"
        assert header(r, "allow") == ["GET, HEAD, POST"]
    assert every_dat(storage_dirs) == sorted(paths)


# -- refused -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_malformed_sha_is_404_before_credentials_are_asked(deleter, statsite):
    for segment in ["not-a-sha", SHA[:-1], SHA + "0", "g" * 64]:
        r, body = await delete(deleter, segment, auth=None)
        assert r.code == 404, segment
        assert body.decode() == MALFORMED.format(segment)
    await statsite.wait_for(r"s\.error\.delete\.malformed_sha\.count:1\|c", count=4)


@pytest.mark.parametrize("auth,headers", [
    pytest.param(None, None, id="none"),
    pytest.param(("admin", "wrong"), None, id="wrong-password"),
    pytest.param(("someone", "admin_pass"), None, id="wrong-user"),
    pytest.param(AUTH, None, id="the-upload-credentials"),
    pytest.param(None, {"Authorization": "Basic !!!not base64"}, id="garbled"),
    pytest.param(None, {"Authorization": "Bearer " + base64.b64encode(b"admin:admin_pass")
                        .decode()}, id="not-basic"),
])
@pytest_twisted.ensureDeferred
async def test_missing_or_wrong_credentials_are_401_and_nothing_is_removed(
        deleter, storage_dirs, statsite, auth, headers):
    paths = await upload(deleter)
    r, body = await delete(deleter, SHA, auth, headers)
    assert r.code == 401
    assert body == b"Authentication required!"
    assert header(r, "www-authenticate") == ['Basic realm="stor"']
    assert every_dat(storage_dirs) == sorted(paths)
    await statsite.wait_for(r"s\.error\.delete\.unauthorized\.count:1\|c")
    r, body = await raw_request("GET", deleter.at(SHA))
    assert (r.code, body) == (200, DATA)


@pytest_twisted.ensureDeferred
async def test_upload_credentials_delete_only_when_delete_auth_is_the_same(
        start_server, config_dict, storage_dirs):
    config_dict["delete_auth"] = config_dict["basic_auth"]
    server = await start_server(config_dict)
    await upload(server)
    r, body = await delete(server, SHA, AUTH)
    assert (r.code, body) == (204, b"")
    assert every_dat(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_not_stored_is_404_naming_the_sha_as_asked(deleter, statsite):
    asked = SHA.upper()
    r, body = await delete(deleter, asked)
    assert r.code == 404
    assert body.decode() == NOT_FOUND.format(asked)
    await statsite.wait_for(r"s\.error\.delete\.not_found\.count:1\|c")
    assert not [line for line in statsite.lines if "success.delete" in line]


# -- removed -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_delete_removes_every_copy_and_the_file_is_gone(deleter, storage_dirs, statsite):
    paths = await upload(deleter)
    other_pair = next(pair for pair in storage_dirs if storage_of(paths[0]) not in pair)
    stray = place(other_pair[0], DATA)  # e.g. left by an old service or a half-done move
    assert len(every_dat(storage_dirs)) == 3

    r, body = await delete(deleter, SHA.upper())  # any case, as GET
    assert (r.code, body) == (204, b"")
    assert every_dat(storage_dirs) == []
    assert not os.path.exists(stray)

    for method in ("GET", "HEAD"):
        r, body = await raw_request(method, deleter.at(SHA))
        assert r.code == 404, method
    assert body == b"" and (await treq.get(deleter.at(SHA))).code == 404
    r, body = await delete(deleter, SHA)  # a second time: nothing left
    assert r.code == 404
    await statsite.wait_for(r"s\.request\.delete\.count:1\|c", count=2)
    await statsite.wait_for(r"s\.success\.delete\.count:1\|c")
    assert len([l for l in statsite.lines if l.startswith("s.success.delete.")]) == 1
    metrics = await (await treq.get(deleter.at("/metrics"))).text()
    assert "\nstor_deletes_total 1.0\n" in metrics


@pytest_twisted.ensureDeferred
async def test_a_lone_replica_waiting_for_repair_is_removed_too(deleter, storage_dirs):
    lone = place(storage_dirs[1][1], DATA)
    r, _ = await delete(deleter, SHA)
    assert r.code == 204
    assert not os.path.exists(lone)
    assert (await treq.get(deleter.at(SHA))).code == 404


@pytest_twisted.ensureDeferred
async def test_delete_removes_nothing_through_a_linked_directory(deleter, storage_dirs, tmp_path):
    """A replica's ``AA/BB/CC`` replaced by a link (to another disk, a directory holding a
    file of that name): DELETE unlinks through directory descriptors, so the file the link
    leads to stays, and the answer names the storage it could not clear (issue 19)."""
    paths = await upload(deleter)
    linked = Path(paths[1])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / linked.name).write_bytes(b"not stor's to remove")
    os.unlink(linked)
    linked.parent.rmdir()
    linked.parent.symlink_to(elsewhere)
    r, body = await delete(deleter, SHA)
    assert r.code == 500
    assert body.decode() == (f"cannot delete: {storage_of(paths[1])}: "
                             "is a symbolic link (not followed)\n")
    assert (elsewhere / linked.name).read_bytes() == b"not stor's to remove"
    assert not os.path.exists(paths[0])  # the other member was cleared


@pytest_twisted.ensureDeferred
async def test_the_same_body_uploaded_after_a_delete_is_stored_and_served_again(
        deleter, storage_dirs):
    await upload(deleter)
    assert (await delete(deleter, SHA))[0].code == 204
    r = await treq.post(deleter.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 201  # not refused as raced by the DELETE: it came after
    assert len(every_dat(storage_dirs)) == 2
    r, body = await raw_request("GET", deleter.at(SHA))
    assert (r.code, body) == (200, DATA)


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_delete_drops_the_cached_path_from_memcached(
        start_server, delete_config, memcached):
    delete_config["memcached_servers"] = [f"127.0.0.1:{memcached.port}"]
    server = await start_server(delete_config)
    paths = await upload(server)
    assert (await treq.get(server.at(SHA))).code == 200  # a lookup: the path is cached
    cached = await wait_until(lambda: memcached.get(SHA.encode()), "memcached to hold the path")
    assert cached.decode() in paths

    r, _ = await delete(server, SHA)
    assert r.code == 204
    await wait_until(lambda: memcached.get(SHA.encode()) is None, "memcached to forget it")
    r, body = await raw_request("GET", server.at(SHA))
    assert r.code == 404
    assert body.decode() == NOT_FOUND.format(SHA)


async def wait_until(condition: Any, what: str, timeout: float = 5.0) -> Any:
    """Poll ``condition`` on the reactor (it may need the reactor to become true)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)
    return value


# -- S3 ----------------------------------------------------------------------

def s3_keys(config: dict[str, Any], moto: Any, bucket: str, host: str) -> dict[str, Any]:
    config.update({
        "s3_enabled": True,
        "s3_credentials": {"access_key": moto.access_key, "secret_key": moto.secret_key,
                           "host": host},
        "s3_bucket": bucket,
        "s3_connect_timeout": 5,
        "s3_timeout": 5,
    })
    return config


def in_bucket(moto: Any, bucket: str, sha: str) -> bool:
    try:
        moto.client().head_object(Bucket=bucket, Key=layout.s3_key(sha))
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404, e
        return False
    return True


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_delete_removes_the_object_from_s3_and_the_local_copies(
        start_server, delete_config, moto, bucket, storage_dirs):
    server = await start_server(s3_keys(delete_config, moto, bucket, moto.endpoint))
    await upload(server)
    moto.put(bucket, layout.s3_key(SHA), DATA)
    assert (await treq.get(server.at(SHA))).code == 200

    r, body = await delete(server, SHA)
    assert (r.code, body) == (204, b"")
    assert not in_bucket(moto, bucket, SHA)
    assert every_dat(storage_dirs) == []
    assert (await treq.get(server.at(SHA))).code == 404


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_file_only_in_s3_is_deleted_there_with_204(
        start_server, delete_config, moto, bucket):
    server = await start_server(s3_keys(delete_config, moto, bucket, moto.endpoint))
    moto.put(bucket, layout.s3_key(SHA), DATA)
    r, _ = await delete(server, SHA)
    assert r.code == 204
    assert not in_bucket(moto, bucket, SHA)
    assert (await treq.get(server.at(SHA))).code == 404


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_s3_unreachable_is_500_naming_s3_after_the_local_copies_went(
        start_server, delete_config, moto, bucket, storage_dirs, statsite):
    host = f"http://127.0.0.1:{refused_port()}"
    server = await start_server(s3_keys(delete_config, moto, bucket, host))
    await upload(server)
    r, body = await delete(server, SHA)
    assert r.code == 500
    assert body.decode().startswith(f"cannot delete: S3: S3 HEAD {host}/"), body
    assert every_dat(storage_dirs) == []  # the local part is done; a retry finishes it
    await statsite.wait_for(r"s\.error\.delete\.500\.count:1\|c")
    assert not [line for line in statsite.lines if "success.delete" in line]


# -- a member that cannot delete ------------------------------------------------

@contextmanager
def mounted_read_only(path: str) -> Iterator[None]:
    """``path`` as a read-only bind mount of itself (a disk remounted ro after errors)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path], check=True)
        yield
    finally:
        subprocess.run(["umount", path], check=True)


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_a_member_that_cannot_delete_is_500_naming_it(deleter, storage_dirs, statsite):
    paths = await upload(deleter)
    stuck, removable = storage_of(paths[0]), paths[1]
    with mounted_read_only(stuck):
        r, body = await delete(deleter, SHA)
        assert r.code == 500
        assert body.decode() == f"cannot delete: {stuck}: Read-only file system\n"
        assert not os.path.exists(removable)  # the others went
        assert every_dat(storage_dirs) == [paths[0]]
        await statsite.wait_for(r"s\.error\.delete\.500\.count:1\|c")
    r, _ = await delete(deleter, SHA)  # the disk is writable again: the retry finishes
    assert r.code == 204
    assert every_dat(storage_dirs) == []


# -- the SHA's lock --------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_delete_waits_for_the_shas_lock_held_by_another_writer(
        deleter, delete_config, storage_dirs, statsite):
    """A writer in another process (``stor scrub --repair``, a sibling worker) holds the
    lock: the DELETE removes nothing until it lets go."""
    paths = await upload(deleter)
    locks = ShaLocks(delete_config["lock_dir"])
    with locks.hold(SHA):
        d = Deferred.fromCoroutine(delete(deleter, SHA))
        await statsite.wait_for(r"s\.request\.delete\.count:1\|c")  # it has arrived
        # Nothing to await for "nothing happens": watch it for a bounded while.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert not d.called, "answered while another writer held the lock"
            assert every_dat(storage_dirs) == sorted(paths)
            await deferLater(reactor, 0.05, lambda: None)
    r, _ = await d
    assert r.code == 204
    assert every_dat(storage_dirs) == []


# -- as an operator sees it: a real stor process ---------------------------------

@pytest.mark.acceptance('stor-process')
def test_delete_logs_one_warning_naming_the_sha_and_the_user(stor_process, tmp_path) -> None:
    stor = stor_process(delete_auth="admin:admin_pass", lock_dir=str(tmp_path / "locks"))
    assert request(stor.port, "POST", f"/{SHA}", DATA, {"Authorization": AUTH_HEADER}).status == 201
    answer = request(stor.port, "DELETE", f"/{SHA}", headers={"Authorization": basic(*DELETER)})
    assert answer.status == 204
    refused = request(stor.port, "DELETE", f"/{SHA}", headers={"Authorization": AUTH_HEADER})
    assert refused.status == 401
    lines = wait_for(lambda: [l for l in stor.out.splitlines() if "#warn]" in l and SHA in l],
                     "the delete's warning", stor)
    assert len(lines) == 1, lines
    assert "deleted " + SHA in lines[0] and "admin" in lines[0], lines[0]
    assert "2 local copies" in lines[0], lines[0]


@pytest.mark.acceptance('stor-process')
def test_an_upload_still_receiving_its_body_when_deleted_is_not_stored(
        stor_process, tmp_path) -> None:
    """The DELETE wins over an upload that began before it: that upload gets 409 and leaves
    nothing; an upload begun after the DELETE is stored as usual."""
    stor = stor_process(delete_auth="admin:admin_pass", lock_dir=str(tmp_path / "locks"))
    body = os.urandom(256 * 1024)
    sha = sha256(body)
    s = socket.create_connection(("127.0.0.1", stor.port), timeout=30)
    s.sendall((f"POST /{sha} HTTP/1.1\r\nHost: stor\r\nAuthorization: {AUTH_HEADER}\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:1000])
    wait_for(lambda: in_flight(stor.port) >= 1, "the upload to be in flight", stor)

    answer = request(stor.port, "DELETE", f"/{sha}", headers={"Authorization": basic(*DELETER)})
    assert answer.status == 404  # not stored (yet): nothing was removed

    s.sendall(body[1000:])
    reply = read_all(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 409 "), reply[:300]
    assert reply.endswith(b"\r\n\r\nDeleted while it was uploaded: not stored\n"), reply
    assert not [p for st in stor.extra["storages"] for p in dat_files(st)]
    assert request(stor.port, "GET", f"/{sha}").status == 404

    again = request(stor.port, "POST", f"/{sha}", body, {"Authorization": AUTH_HEADER})
    assert again.status == 201
    got = request(stor.port, "GET", f"/{sha}")
    assert (got.status, got.body) == (200, body)


def in_flight(port: int) -> float:
    """stor's count of requests in flight, less the scrape asking."""
    text = request(port, "GET", "/metrics").body.decode()
    line = next(l for l in text.splitlines() if l.startswith("stor_http_requests_in_flight "))
    return float(line.split()[1]) - 1


def read_all(s: socket.socket) -> bytes:
    """One answer with a Content-Length, whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:"))
    while len(rest) < length:
        chunk = s.recv(65536)
        assert chunk, data
        rest += chunk
    return head + b"\r\n\r\n" + rest
