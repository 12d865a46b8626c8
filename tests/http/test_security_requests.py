"""Issue 19, findings 5 and 6: hostile Range and Transfer-Encoding headers get a 4xx or are
ignored, never a 500 or a body framed otherwise than a balancer in front frames it."""

import hashlib
import socket

import pytest

from support.harness import AUTH_HEADER, request

pytestmark = pytest.mark.acceptance('stor-process')


BODY = b"range target " * 100
SHA = hashlib.sha256(BODY).hexdigest()
HUGE = "9" * 4301  # one past what int() reads


@pytest.fixture
def stored(stor_process):
    stor = stor_process()
    assert request(stor.port, "POST", f"/{SHA}", BODY, {"Authorization": AUTH_HEADER}).status == 201
    return stor


@pytest.mark.parametrize("header, statuses", [
    (f"bytes=-{HUGE}", {200, 206}), (f"bytes=-{'0' * 5000}5", {206}),
    (f"bytes={HUGE}-", {416}), (f"bytes=0-{HUGE}", {206}), (f"bytes={HUGE}-{HUGE}", {416}),
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_absurd_range_is_ignored_clamped_or_416_never_500(stored, header: str,
                                                              statuses: set[int], method: str) -> None:
    answer = request(stored.port, method, f"/{SHA}", headers={"Range": header})
    assert answer.status in statuses, answer
    if method == "GET" and answer.status == 200:
        assert answer.body == BODY
    if answer.status == 206 and method == "GET":
        assert BODY.endswith(answer.body) and answer.body
    assert "limit" not in answer.headers.get("stor-reason", "")  # int()'s 4300-digit message
    assert "Traceback" not in stored.out + stored.err
    assert "#error]" not in stored.out  # nothing logged at error level


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("codings", [
    [b"chunked", b"identity"], [b"identity"], [b"identity", b"chunked"], [b"gzip, chunked"],
    [b"chunked", b"chunked"], [b"xchunked"],
])
def test_a_transfer_encoding_other_than_exactly_chunked_is_400(stor_process,
                                                                codings: list[bytes]) -> None:
    stor = stor_process()
    body = b"smuggled"
    sha = hashlib.sha256(body).hexdigest().encode()
    headers = b"".join(b"Transfer-Encoding: " + c + b"\r\n" for c in codings)
    answer = _raw(stor.port, b"POST /" + sha + b" HTTP/1.1\r\nHost: x\r\nAuthorization: "
                  + AUTH_HEADER.encode() + b"\r\n" + headers + b"\r\n"
                  + b"8\r\n" + body + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert request(stor.port, "HEAD", f"/{sha.decode()}").status == 404


def test_plain_chunked_uploads_still_work(stor_process) -> None:
    stor = stor_process()
    body = b"honest chunks"
    sha = hashlib.sha256(body).hexdigest().encode()
    answer = _raw(stor.port, b"POST /" + sha + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Authorization: " + AUTH_HEADER.encode() + b"\r\nTransfer-Encoding: Chunked\r\n"
                  b"\r\nd\r\n" + body + b"\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:200]
