"""ETag, If-None-Match and Range: the pure rules, then through HTTP with curl."""

import os
import subprocess

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import threads

from support.helpers import AUTH, raw_http, sha256
from stor.core.errors import RangeNotSatisfiable as Unsatisfiable
from stor.core.ranges import NOT_MODIFIED, WHOLE, ByteRange, Part, Selection, etag, none_match, parse_range

SHA = "ab" * 32


def test_etag_is_the_quoted_lower_case_sha():
    assert etag(SHA.upper()) == b'"%s"' % SHA.encode()


@pytest.mark.parametrize("header", [b'"%s"' % SHA.encode(), b'W/"%s"' % SHA.encode(), b"*",
                                    b'"x", "%s"' % SHA.encode()])
def test_if_none_match_matches(header):
    assert none_match(header, SHA)


@pytest.mark.parametrize("header", [None, b'"other"', b"", SHA.encode()])
def test_if_none_match_does_not_match(header):
    assert not none_match(header, SHA)


@pytest.mark.parametrize("header,expected", [
    (b"bytes=0-99", ByteRange(0, 99, 1000)),
    (b"bytes=900-", ByteRange(900, 999, 1000)),
    (b"bytes=-10", ByteRange(990, 999, 1000)),
    (b"bytes=-5000", ByteRange(0, 999, 1000)),
    (b"bytes=10-5000", ByteRange(10, 999, 1000)),
    (b"bytes=0-0,5-6", None),  # several ranges: the whole file
    (b"items=0-1", None),
    (b"bytes=5-1", None),
])
def test_parse_range(header, expected):
    assert parse_range(header, 1000, None, SHA) == expected


@pytest.mark.parametrize("header", [b"bytes=1000-", b"bytes=5000-6000", b"bytes=-0"])
def test_unsatisfiable(header):
    with pytest.raises(Unsatisfiable):
        parse_range(header, 1000, None, SHA)


def test_if_range_with_another_validator_sends_everything():
    assert parse_range(b"bytes=0-1", 10, b'"other"', SHA) is None
    assert parse_range(b"bytes=0-1", 10, etag(SHA), SHA) == ByteRange(0, 1, 10)


@given(size=st.integers(1, 10**12), a=st.integers(0, 10**12), b=st.integers(0, 10**12))
def test_a_satisfiable_range_stays_inside_the_file(size, a, b):
    first, last = min(a, b), max(a, b)
    try:
        r = parse_range(b"bytes=%d-%d" % (first, last), size, None, SHA)
    except Unsatisfiable:
        assert first >= size
        return
    assert r is not None and 0 <= r.first <= r.last < size and r.length >= 1


# -- through HTTP -------------------------------------------------------------------------


DATA = os.urandom(3 * 1024 * 1024 + 7)  # larger than one read chunk: streamed by the producer
SMALL = b"0123456789" * 20


async def stored(server, data: bytes) -> str:
    import treq
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    return sha256(data)


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=30, check=True)


def head_of(output: bytes) -> dict[str, str]:
    lines = output.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    headers[":status"] = lines[0].split()[1]
    return headers


@pytest.mark.acceptance('process')
@pytest.mark.parametrize("data", [SMALL, DATA], ids=["small", "streamed"])
@pytest_twisted.ensureDeferred
async def test_curl_range_gets_206_with_exactly_those_bytes(server, data):
    sha = await stored(server, data)
    out = await threads.deferToThread(curl, "-r", "0-99", "-D", "-", server.at(sha))
    headers, _, body = out.stdout.partition(b"\r\n\r\n")
    h = head_of(out.stdout)
    assert h[":status"] == "206"
    assert h["content-range"] == f"bytes 0-99/{len(data)}"
    assert body == data[:100]
    out = await threads.deferToThread(curl, "-r", f"{len(data) - 5}-", server.at(sha))
    assert out.stdout == data[-5:]
    out = await threads.deferToThread(curl, "-r", "1000000-1000009", server.at(sha))
    assert out.stdout == data[1000000:1000010] or len(data) < 1000000


@pytest_twisted.ensureDeferred
async def test_200_carries_the_new_headers_on_get_and_head(server):
    sha = await stored(server, SMALL)
    for method in ("GET", "HEAD"):
        answer = await raw_http(server.url, f"{method} /{sha} HTTP/1.1\r\nHost: x\r\n"
                                            "Connection: close\r\n\r\n".encode())
        h = head_of(answer)
        assert h[":status"] == "200"
        assert h["etag"] == f'"{sha}"'
        assert h["accept-ranges"] == "bytes"
        assert h["cache-control"] == "public, max-age=31536000, immutable"
        assert h["content-type"] == "application/octet-stream"
        assert h["content-length"] == str(len(SMALL))


@pytest.mark.acceptance('process')
@pytest_twisted.ensureDeferred
async def test_if_none_match_with_the_etag_is_304_without_a_body(server):
    sha = await stored(server, DATA)
    for method in ("GET", "HEAD"):
        answer = await raw_http(server.url, f'{method} /{sha} HTTP/1.1\r\nHost: x\r\n'
                                            f'If-None-Match: "{sha}"\r\n'
                                            'Connection: close\r\n\r\n'.encode())
        h = head_of(answer)
        assert h[":status"] == "304"
        assert h["etag"] == f'"{sha}"'
        assert answer.split(b"\r\n\r\n", 1)[1] == b""
    out = await threads.deferToThread(curl, "-o", "/dev/null", "-w", "%{http_code}",
                                      "-H", 'If-None-Match: "other"', server.at(sha))
    assert out.stdout == b"200"


@pytest_twisted.ensureDeferred
async def test_range_past_the_end_is_416(server):
    sha = await stored(server, SMALL)
    answer = await raw_http(server.url, f"GET /{sha} HTTP/1.1\r\nHost: x\r\n"
                                        "Range: bytes=5000-\r\nConnection: close\r\n\r\n".encode())
    h = head_of(answer)
    assert h[":status"] == "416"
    assert h["content-range"] == f"bytes */{len(SMALL)}"


@pytest_twisted.ensureDeferred
async def test_head_with_a_range_has_its_headers(server):
    sha = await stored(server, SMALL)
    answer = await raw_http(server.url, f"HEAD /{sha} HTTP/1.1\r\nHost: x\r\n"
                                        "Range: bytes=0-9\r\nConnection: close\r\n\r\n".encode())
    h = head_of(answer)
    assert h[":status"] == "206"
    assert h["content-length"] == "10"
    assert h["content-range"] == f"bytes 0-9/{len(SMALL)}"


SHA = "ab" * 32


def test_a_plain_get_needs_no_size() -> None:
    assert Selection(SHA).plain
    assert not Selection(SHA, head=True).plain
    assert not Selection(SHA, range=b"bytes=0-1").plain
    assert not Selection(SHA, if_none_match=b'"x"').plain


def test_selection_decides_the_part_once_the_size_is_known() -> None:
    assert Selection(SHA).part(10) == WHOLE
    assert Selection(SHA, if_none_match=etag(SHA)).part(10) == NOT_MODIFIED
    assert Selection(SHA, range=b"bytes=2-4").part(10) == Part(206, ByteRange(2, 4, 10))
    assert Selection(SHA, range=b"bytes=2-4", if_range=b'"other"').part(10) == WHOLE
    with pytest.raises(Unsatisfiable):
        Selection(SHA, range=b"bytes=10-").part(10)


def test_only_a_whole_answer_can_be_verified() -> None:
    assert WHOLE.whole and not NOT_MODIFIED.whole
    assert not Part(206, ByteRange(0, 0, 1)).whole
    assert WHOLE.length(10) == 10 and NOT_MODIFIED.length(10) == 0
    assert Part(206, ByteRange(2, 4, 10)).length(10) == 3
