"""docs/SPEC.md §1 through real HTTP on a loopback port: codes, bodies, headers, order of checks."""

import json
import os
from email.utils import parsedate_to_datetime
from io import BytesIO
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from support.helpers import (AUTH, dat_files, raw_http, raw_request, remove_storage, sha256,
                             temp_files)
from stor import __version__
from stor.core import layout

DATA = b"stor test file\n" * 1000
SHA = sha256(DATA)


def place(storage: str, data: bytes) -> str:
    """Put a file where the old service would have: the §2 layout, by hand."""
    path = layout.file_path(storage, sha256(data))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(data)
    return path


def unsized(data: bytes) -> FileBodyProducer:
    """A body sent chunked: no Content-Length."""
    producer = FileBodyProducer(BytesIO(data))
    producer.length = UNKNOWN_LENGTH
    return producer


@pytest_twisted.ensureDeferred
async def test_root_names_the_service(server):
    r = await treq.get(server.at("/"))
    assert r.code == 200
    assert await r.text() == f"This is Stor {__version__}"


@pytest_twisted.ensureDeferred
async def test_post_stores_on_both_members_of_a_pair_and_get_returns_it(server, storage_dirs):
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 201
    paths = json.loads(await r.text())
    assert len(paths) == 2
    assert tuple(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(p))))
                 for p in paths) in {tuple(pair) for pair in map(tuple, storage_dirs)}
    for p in paths:
        assert p == layout.file_path(p.split("/" + SHA.upper()[:2] + "/")[0], SHA)
        assert Path(p).read_bytes() == DATA
    assert temp_files(storage_dirs) == []

    r, body = await raw_request("GET", server.at(SHA))
    assert r.code == 200
    assert body == DATA
    assert r.length == len(DATA)
    modified = parsedate_to_datetime(r.headers.getRawHeaders("last-modified")[0])
    assert int(modified.timestamp()) == int(os.stat(paths[0]).st_mtime)


@pytest_twisted.ensureDeferred
async def test_head_has_the_headers_and_no_body(server, storage_dirs):
    place(storage_dirs[1][0], DATA)
    answer = await raw_http(server.url, f"HEAD /{SHA} HTTP/1.1\r\nHost: x\r\n"
                                        "Connection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"Content-Length: {len(DATA)}".encode() in head.split(b"\r\n")
    assert b"Last-Modified: " in head
    assert body == b""


@pytest_twisted.ensureDeferred
async def test_upper_case_sha_is_the_same_file(server, storage_dirs):
    r = await treq.post(server.at(SHA.upper()), data=DATA, auth=AUTH)
    assert r.code == 201
    r = await treq.get(server.at(SHA.upper()))
    assert r.code == 200 and await r.content() == DATA
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_files_placed_by_the_old_service_are_served(server, storage_dirs):
    big = os.urandom(3 * 1024 * 1024 + 17)  # streamed, not read whole
    for data, storage in ((DATA, storage_dirs[0][1]), (big, storage_dirs[1][0])):
        place(storage, data)
        r = await treq.get(server.at(sha256(data)))
        assert r.code == 200
        assert await r.content() == data


@pytest_twisted.ensureDeferred
async def test_unknown_sha_is_404(server):
    r = await treq.get(server.at("0" * 64))
    assert r.code == 404
    r = await treq.head(server.at("0" * 64))
    assert r.code == 404


@pytest.mark.parametrize("segment", ["abc", "g" * 64, "0" * 63, "0" * 65, "status2"])
@pytest_twisted.ensureDeferred
async def test_malformed_sha_get_is_404_with_a_reason(server, segment):
    r = await treq.get(server.at(segment))
    assert r.code == 404
    # the old service's body, byte for byte (docs/SPEC.md §1); the detail is in a header
    assert await r.text() == (
        f"Caught failure::stor::filenotfound: Given hash '{segment}' isn't SHA256\n")
    assert "malformed sha256" in r.headers.getRawHeaders("stor-reason")[0]


@pytest_twisted.ensureDeferred
async def test_post_without_or_with_wrong_credentials_is_401(server, storage_dirs):
    for auth in (None, ("writer", "wrong"), ("other", "writer_pass")):
        r = await treq.post(server.at(SHA), data=DATA, auth=auth)
        assert r.code == 401
        assert r.headers.getRawHeaders("www-authenticate") == ['Basic realm="stor"']
        await r.content()
    assert dat_files(os.path.dirname(storage_dirs[0][0])) == []


@pytest_twisted.ensureDeferred
async def test_malformed_sha_post_is_412_before_credentials(server, storage_dirs):
    r = await treq.post(server.at("x" * 64), data=DATA)
    assert r.code == 412
    assert await r.text() == f"Given hash '{'x' * 64}' isn't sha256"


@pytest_twisted.ensureDeferred
async def test_body_not_matching_the_sha_is_412_naming_both_and_keeps_nothing(server, storage_dirs):
    wrong = "ab" * 32
    r = await treq.post(server.at(wrong), data=DATA, auth=AUTH)
    assert r.code == 412
    assert await r.text() == f"Content sha256 {SHA} doesn't match given sha256 {wrong}"
    assert dat_files(os.path.dirname(storage_dirs[0][0])) == []
    assert temp_files(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_duplicate_is_200_listing_every_path(server, storage_dirs):
    existing = [place(storage_dirs[0][0], DATA), place(storage_dirs[0][1], DATA),
                place(storage_dirs[1][1], DATA)]
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 200
    assert sorted(json.loads(await r.text())) == sorted(existing)


@pytest_twisted.ensureDeferred
async def test_a_lone_replica_is_not_a_duplicate_the_upload_stores_a_pair(server, storage_dirs):
    lone = place(storage_dirs[0][0], DATA)  # its twin is missing: not a promise kept
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 201
    paths = json.loads(await r.text())
    assert len(paths) == 2 and all(Path(p).read_bytes() == DATA for p in paths)
    assert Path(lone).read_bytes() == DATA


@pytest_twisted.ensureDeferred
async def test_order_of_checks(server, storage_dirs):
    place(storage_dirs[0][0], DATA)
    place(storage_dirs[0][1], DATA)
    # credentials are checked before the duplicate
    r = await treq.post(server.at(SHA), data=DATA, auth=("writer", "nope"))
    assert r.code == 401
    # the duplicate is answered before the body is checked
    r = await treq.post(server.at(SHA), data=b"not the file", auth=AUTH)
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_chunked_upload_without_content_length(server, storage_dirs):
    data = os.urandom(2 * 1024 * 1024 + 5)
    r = await treq.post(server.at(sha256(data)), data=unsized(data), auth=AUTH)
    assert r.code == 201
    for p in json.loads(await r.text()):
        assert Path(p).read_bytes() == data


@pytest_twisted.ensureDeferred
async def test_no_writable_pair_is_507(start_server, config_dict, storage_dirs):
    config_dict["writable_pairs_regex"] = "^nothing-matches$"
    server = await start_server(config_dict)
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 507
    assert dat_files(os.path.dirname(storage_dirs[0][0])) == []


@pytest_twisted.ensureDeferred
async def test_writable_pairs_regex_picks_the_pair(start_server, config_dict, storage_dirs):
    config_dict["writable_pairs_regex"] = "data[34]$"
    server = await start_server(config_dict)
    for i in range(6):
        data = b"%d" % i
        r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
        assert r.code == 201
        assert [os.path.basename(p.split("/" + sha256(data).upper()[:2])[0])
                for p in json.loads(await r.text())] == ["data3", "data4"]


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_file_larger_than_the_disk_is_507(start_server, config_dict, tiny_disk, storage_dirs):
    a, b = tiny_disk / "a", tiny_disk / "b"
    a.mkdir(), b.mkdir()
    config_dict["storage_pairs"] = [[str(a), str(b)]]
    server = await start_server(config_dict)
    data = os.urandom(2 * 1024 * 1024)
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 507
    assert dat_files(tiny_disk) == []


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_disk_filling_up_mid_upload_is_507_and_leaves_nothing(
        start_server, config_dict, tiny_disk):
    a, b = tiny_disk / "a", tiny_disk / "b"
    a.mkdir(), b.mkdir()
    config_dict["storage_pairs"] = [[str(a), str(b)]]
    server = await start_server(config_dict)
    data = os.urandom(768 * 1024)  # fits once (pair choice passes), not twice
    r = await treq.post(server.at(sha256(data)), data=unsized(data), auth=AUTH)
    assert r.code == 507
    assert await r.text() == "Caught failure::stor: Not enough space on storages\n"
    assert "No space left" in r.headers.getRawHeaders("stor-reason")[0]
    assert dat_files(tiny_disk) == []
    assert temp_files([[str(a), str(b)]]) == []


@pytest_twisted.ensureDeferred
async def test_upload_over_max_upload_size_is_413(start_server, config_dict, storage_dirs):
    config_dict["max_upload_size"] = 1000
    server = await start_server(config_dict)
    for body in (b"x" * 1001, unsized(b"x" * 5000)):
        r = await treq.post(server.at("ab" * 32), data=body, auth=AUTH)
        assert r.code == 413
    assert temp_files(storage_dirs) == []


@pytest_twisted.ensureDeferred
async def test_status_ok_when_every_storage_is_a_directory(server):
    r = await treq.get(server.at("status"))
    assert r.code == 200
    assert await r.text() == "OK"


@pytest_twisted.ensureDeferred
async def test_status_503_names_each_failing_storage(start_server, config_dict, storage_dirs, tmp_path):
    missing = str(tmp_path / "gone")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    config_dict["storage_pairs"] = [[storage_dirs[0][0], missing]]
    server = await start_server(config_dict)
    remove_storage(storage_dirs[0][0])  # with the .stor-tmp its write probe made
    os.symlink(a_file, storage_dirs[0][0])
    r = await treq.get(server.at("status"))
    assert r.code == 503
    text = await r.text()
    assert f"{missing}: does not exist" in text
    assert f"{storage_dirs[0][0]}: is not a directory" in text


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_status_with_check_mounts_refuses_storages_on_the_root_fs(
        start_server, config_dict, storage_dirs, tiny_disk):
    if os.stat(storage_dirs[0][0]).st_dev != os.stat("/").st_dev:
        pytest.skip("the test's temp dir is not on the / filesystem here")
    config_dict["check_mounts"] = True
    config_dict["storage_pairs"] = [[storage_dirs[0][0], str(tiny_disk)]]
    server = await start_server(config_dict)
    r = await treq.get(server.at("status"))
    assert r.code == 503
    text = await r.text()
    assert f"{storage_dirs[0][0]}: is on the / filesystem" in text
    assert str(tiny_disk) not in text


@pytest_twisted.ensureDeferred
async def test_other_methods_are_405_saying_what_is_allowed(server):
    r = await treq.request("PUT", server.at(SHA), data=b"x")
    assert r.code == 405
    allowed = {m.strip() for m in r.headers.getRawHeaders("allow")[0].split(",")}
    assert allowed == {"GET", "HEAD", "POST"}
