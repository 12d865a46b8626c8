"""S3Writer against real peers: moto (signatures checked; every object read
back and hashed, since moto does not check x-amz-content-sha256), a scripted
server that shows what was sent, a sink that counts body bytes, a black hole
and a refused port.  The 256 MiB puts run in a child process that reports its
peak RSS."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, strategies as st
from twisted.internet import reactor

from support.s3 import MotoS3, ScriptedPeer, black_hole, refused_port, response
from support.s3write import (
    MiB,
    Sink,
    bounded,
    make_file,
    open_uploads,
    place_big,
    s3_config,
    stored_sha,
)
from stor.core import layout
from stor.s3.put import (
    MAX_PARTS, MIN_PART_SIZE, CorruptLocalFile, S3WriteError, part_ranges,
)
from rgw_peer import moto_then_rgw


@pytest.fixture(params=["moto", "rgw"])
def moto(request, moto):
    """These tests hold on moto's server and on a real S3, Ceph RGW (tests/rgw_peer.py)."""
    return moto_then_rgw(request, moto)


HERE = Path(__file__).parent


@pytest.fixture
def moto_writer(make_writer: Any, moto: MotoS3, bucket: str) -> Any:
    return make_writer(s3_config(moto, bucket))


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_small_file_is_put_and_reads_back_whole(moto_writer, moto, bucket, tmp_path):
    sha, path = make_file(tmp_path, b"hello, bucket\n" * 1000)
    assert await bounded(moto_writer.exists(sha)) is False
    assert await bounded(moto_writer.put_file(sha, path)) == 14000
    assert await bounded(moto_writer.exists(sha)) is True
    assert stored_sha(moto, bucket, sha) == sha


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_an_empty_file_is_put(moto_writer, moto, bucket, tmp_path):
    sha, path = make_file(tmp_path, b"")
    await bounded(moto_writer.put_file(sha, path))
    assert stored_sha(moto, bucket, sha) == sha


@pytest_twisted.ensureDeferred
async def test_the_put_is_signed_with_the_files_sha_and_the_region(make_writer, tmp_path):
    peer = ScriptedPeer(response("200 OK", {"Content-Length": "0"}))
    port = reactor.listenTCP(0, peer, interface="127.0.0.1")
    try:
        config = s3_config_for(f"http://127.0.0.1:{port.getHost().port}", region="eu-central-1")
        writer = make_writer(config)
        sha, path = make_file(tmp_path, b"signed body")
        await bounded(writer.put_file(sha, path))
    finally:
        await port.stopListening()
    head = peer.requests[0].decode().lower()
    assert head.startswith(f"put /b/{layout.s3_key(sha)} http/1.1")
    assert f"x-amz-content-sha256: {sha}" in head
    authorization = [line for line in head.split("\r\n") if line.startswith("authorization:")][0]
    assert "/eu-central-1/s3/aws4_request" in authorization
    assert "x-amz-content-sha256" in authorization.split("signedheaders=")[1]


def s3_config_for(endpoint: str, **kw: Any) -> Any:
    from stor.config import S3Config

    return S3Config(access_key="AKIAEXAMPLE", secret_key="secret", endpoint=endpoint,
                    bucket="b", timeout=kw.pop("timeout", 5.0), **kw)


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_corrupt_local_file_is_never_stored(moto_writer, moto, bucket, tmp_path):
    good = b"the real content" * 4096
    sha, path = make_file(tmp_path, good[:-1] + b"X", sha=make_file(tmp_path / "x", good)[0])
    with pytest.raises(CorruptLocalFile) as caught:
        await bounded(moto_writer.put_file(sha, path))
    assert caught.value.path == path
    assert stored_sha(moto, bucket, sha) is None


@pytest_twisted.ensureDeferred
async def test_a_corrupt_file_is_cut_before_its_last_byte(make_writer, tmp_path):
    sink = Sink()
    port = reactor.listenTCP(0, sink, interface="127.0.0.1")
    try:
        writer = make_writer(s3_config_for(f"http://127.0.0.1:{port.getHost().port}"))
        data = os.urandom(3 * MiB)
        sha, path = make_file(tmp_path, data[:-1] + bytes([data[-1] ^ 1]),
                              sha=make_file(tmp_path / "x", data)[0])
        closed = sink.closed()
        with pytest.raises(CorruptLocalFile):
            await bounded(writer.put_file(sha, path))
        received = await bounded(closed)
    finally:
        await port.stopListening()
    assert b"content-length: %d" % len(data) in sink.heads[0].lower()
    assert 0 < received < len(data)


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_file_cut_short_is_corrupt(moto_writer, moto, bucket, tmp_path):
    data = b"x" * 100_000
    sha, path = make_file(tmp_path, data)
    os.truncate(path, 50_000)
    with pytest.raises(CorruptLocalFile):
        await bounded(moto_writer.put_file(sha, path))
    assert stored_sha(moto, bucket, sha) is None


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_missing_local_file_is_an_os_error(moto_writer, tmp_path):
    with pytest.raises(FileNotFoundError):
        await bounded(moto_writer.put_file("ab" * 32, str(tmp_path / "gone.dat")))


# -- multipart -------------------------------------------------------------


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_large_file_goes_in_parts(make_writer, moto, bucket, tmp_path):
    writer = make_writer(s3_config(moto, bucket), multipart_threshold=6 * MiB,
                         part_size=5 * MiB)
    sha, path = place_big(tmp_path, 12 * MiB + 3, seed=1)
    assert await bounded(writer.put_file(sha, path)) == 12 * MiB + 3
    assert stored_sha(moto, bucket, sha) == sha
    assert moto.head(bucket, layout.s3_key(sha))["etag"].endswith('-3"')  # three parts
    assert open_uploads(moto, bucket) == []


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_corrupt_large_file_is_aborted_and_never_stored(make_writer, moto, bucket,
                                                                  tmp_path):
    writer = make_writer(s3_config(moto, bucket), multipart_threshold=6 * MiB,
                         part_size=5 * MiB)
    sha, path = place_big(tmp_path, 12 * MiB, seed=2)
    with open(path, "r+b") as f:  # one flipped byte in the middle part
        f.seek(7 * MiB)
        byte = f.read(1)
        f.seek(7 * MiB)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptLocalFile):
        await bounded(writer.put_file(sha, path))
    assert stored_sha(moto, bucket, sha) is None
    assert open_uploads(moto, bucket) == []  # the started upload was aborted


@given(size=st.integers(0, 200 * 1024**3), part=st.integers(1, 64 * MiB))
def test_parts_cover_the_file_within_s3s_limits(size, part):
    ranges = part_ranges(size, part)
    assert sum(length for _, length in ranges) == size
    assert all(a + la == b for (a, la), (b, _) in zip(ranges, ranges[1:]))
    assert len(ranges) <= MAX_PARTS
    assert all(length >= MIN_PART_SIZE for _, length in ranges[:-1])


# -- refusals and outages ----------------------------------------------------


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_wrong_secret_is_a_permanent_refusal(make_writer, moto, bucket, tmp_path):
    writer = make_writer(s3_config(moto, bucket, secret_key="wrong"))
    sha, path = make_file(tmp_path, b"data")
    with pytest.raises(S3WriteError) as caught:
        await bounded(writer.put_file(sha, path))
    assert (caught.value.status, caught.value.retryable) == (403, False)
    with pytest.raises(S3WriteError) as caught:
        await bounded(writer.exists(sha))
    assert (caught.value.status, caught.value.retryable) == (403, False)


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_a_missing_bucket_is_a_permanent_refusal(make_writer, moto, tmp_path):
    writer = make_writer(s3_config(moto, "no-such-bucket-here"))
    sha, path = make_file(tmp_path, b"data")
    with pytest.raises(S3WriteError) as caught:
        await bounded(writer.put_file(sha, path))
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        404, "NoSuchBucket", False)


@pytest_twisted.ensureDeferred
async def test_a_server_error_is_retryable(make_writer, tmp_path):
    peer = ScriptedPeer(response("503 Slow Down", body=b"<Error><Code>SlowDown</Code></Error>",
                                 content_length=36))
    port = reactor.listenTCP(0, peer, interface="127.0.0.1")
    try:
        writer = make_writer(s3_config_for(f"http://127.0.0.1:{port.getHost().port}"))
        sha, path = make_file(tmp_path, b"data")
        with pytest.raises(S3WriteError) as caught:
            await bounded(writer.put_file(sha, path))
    finally:
        await port.stopListening()
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        503, "SlowDown", True)


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_is_retryable(make_writer, tmp_path):
    writer = make_writer(s3_config_for(f"http://127.0.0.1:{refused_port()}"))
    sha, path = make_file(tmp_path, b"data")
    with pytest.raises(S3WriteError) as caught:
        await bounded(writer.put_file(sha, path))
    assert caught.value.retryable
    assert "cannot connect" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_a_silent_store_is_given_up_after_the_timeout(make_writer, tmp_path):
    with black_hole() as port:
        writer = make_writer(s3_config_for(f"http://127.0.0.1:{port}", timeout=0.5))
        sha, path = make_file(tmp_path, b"data")
        with pytest.raises(S3WriteError) as caught:
            await bounded(writer.exists(sha), 5)
    assert caught.value.retryable
    assert "no progress within 0.5s" in str(caught.value)


# -- 256 MiB, memory flat ------------------------------------------------------


@pytest.mark.acceptance('moto', 'process')
def test_256_mib_files_go_up_whole_with_flat_memory(moto, bucket, tmp_path):
    """In a child process: one 256 MiB file (multipart, the default threshold) and
    one 48 MiB single PUT; its peak RSS may grow by far less than either file."""
    big_sha, big_path = place_big(tmp_path, 256 * MiB, seed=3)
    single_sha, single_path = place_big(tmp_path, 48 * MiB, seed=4)
    job = {"endpoint": moto.endpoint, "access_key": moto.access_key,
           "secret_key": moto.secret_key, "bucket": bucket,
           "files": [[big_sha, big_path], [single_sha, single_path]]}
    child = subprocess.run([sys.executable, str(HERE.parent / "support" / "s3put_child.py"), json.dumps(job)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["sizes"] == [256 * MiB, 48 * MiB]
    assert report["multipart"] == [True, False]
    grown = report["peak_kib_after"] - report["peak_kib_before"]
    print(f"peak RSS {report['peak_kib_before']} KiB -> {report['peak_kib_after']} KiB")
    assert grown < 24 * 1024, report  # a few chunks, not a part or a file
    assert stored_sha(moto, bucket, big_sha) == big_sha
    assert stored_sha(moto, bucket, single_sha) == single_sha
    assert open_uploads(moto, bucket) == []


def test_the_read_path_signs_for_the_configured_region():
    from stor.s3.read import S3Reader

    reader = S3Reader(s3_config_for("http://127.0.0.1:9", region="ap-southeast-2"), None,
                      reactor, None)
    headers = reader.signed_headers("GET", reader.url("ab" * 32))
    assert b"/ap-southeast-2/s3/aws4_request" in headers.getRawHeaders(b"authorization")[0]
