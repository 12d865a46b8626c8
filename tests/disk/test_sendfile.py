"""Large downloads by sendfile(2): the same bytes and headers as through twisted.web,
verified (a rotten file is never sent whole), back-pressure and hang-ups handled."""

import hashlib
import http.client
import os
import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from support.helpers import sha256
from stor.core import layout
from stor.core.errors import CorruptReplica
from stor.disk.body import TAIL, SendfileBody
from twisted.internet.defer import Deferred, gatherResults

MiB = 1024 * 1024


STORED_AT = 1_700_000_000
"""Every placed replica's mtime: the two of a file must give one ``Last-Modified``,
whichever a server answers from (written a second apart, they did not, now and then)."""


def place(storage: str, data: bytes) -> str:
    path = layout.file_path(storage, sha256(data))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(data)
    os.utime(path, (STORED_AT, STORED_AT))
    return path


def fetch(url: str, headers: dict[str, str] | None = None, read_slowly: bool = False
          ) -> tuple[bytes, bytes, bool]:
    """(head, body, complete) of one GET on a new connection (blocking: run in a thread)."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        try:
            while chunk := sock.recv(256 * 1024):
                data += chunk
                if read_slowly:
                    time.sleep(0.002)
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length:")))
    return head, body, len(body) == length


def comparable(head: bytes) -> list[bytes]:
    return [l for l in head.split(b"\r\n") if not l.lower().startswith((b"date:", b"stor-worker:"))]


@pytest_twisted.async_fixture
async def two_servers(start_server, config_dict, storage_dirs):
    """stor with sendfile and stor without (the twisted.web producer), same storages."""
    with_sendfile = await start_server(config_dict)
    without = await start_server(dict(config_dict, sendfile=False))
    return with_sendfile, without


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=1000-2999999"}],
                         ids=["whole", "range"])
@pytest_twisted.ensureDeferred
async def test_sendfile_and_the_producer_give_the_same_answer(two_servers, storage_dirs, headers):
    data = os.urandom(3 * MiB + 7)
    place(storage_dirs[0][0], data)
    place(storage_dirs[0][1], data)
    answers = [await threads.deferToThread(fetch, server.at(sha256(data)), headers)
               for server in two_servers]
    (head_a, body_a, done_a), (head_b, body_b, done_b) = answers
    assert done_a and done_b
    assert comparable(head_a) == comparable(head_b)
    assert body_a == body_b
    expected = data[1000:3000000] if headers else data
    assert body_a == expected


def fetch_all_kept_alive(port: int, shas: list[str], rounds: int) -> list[tuple[int, str]]:
    """(status, sha256 of the body) of every GET, ``rounds`` times over ``shas``, all on
    one kept-alive connection (blocking: run in a thread)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    seen = []
    try:
        for _ in range(rounds):
            for sha in shas:
                conn.request("GET", f"/{sha}")
                answer = conn.getresponse()
                seen.append((answer.status, hashlib.sha256(answer.read()).hexdigest()))
    finally:
        conn.close()
    return seen


@pytest_twisted.ensureDeferred
async def test_parallel_kept_alive_downloads_each_get_their_own_bytes(start_server, config_dict,
                                                                      storage_dirs):
    """The headers twisted.web buffers always go before the file the kernel sends,
    whenever the hashing thread lets the sender go on."""
    server = await start_server(config_dict)
    shas = []
    for size in (MiB, MiB + 1, 3 * MiB, 4 * MiB):
        data = os.urandom(size)
        place(storage_dirs[0][0], data)
        place(storage_dirs[0][1], data)
        shas.append(sha256(data))
    results = await gatherResults([threads.deferToThread(fetch_all_kept_alive, server.port.getHost().port,
                                                           shas, 8)
                                   for _ in range(8)])
    for seen in results:
        assert seen == [(200, sha) for sha in shas] * 8


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_gets_every_byte(start_server, config_dict, storage_dirs):
    server = await start_server(config_dict)
    data = os.urandom(8 * MiB)
    place(storage_dirs[1][0], data)
    place(storage_dirs[1][1], data)
    _, body, complete = await threads.deferToThread(fetch, server.at(sha256(data)), None, True)
    assert complete and body == data


@pytest_twisted.ensureDeferred
async def test_a_rotten_large_file_is_cut_before_its_end(start_server, config_dict, storage_dirs):
    server = await start_server(config_dict)
    data = os.urandom(5 * MiB)
    path = place(storage_dirs[0][0], data)  # the only replica
    raw = bytearray(data)
    raw[-1] ^= 0xFF  # rotten in its very last byte
    Path(path).write_bytes(bytes(raw))
    _, body, complete = await threads.deferToThread(fetch, server.at(sha256(data)))
    assert not complete and len(body) <= len(data) - TAIL


@pytest_twisted.ensureDeferred
async def test_a_client_hanging_up_mid_file_leaves_the_server_serving(start_server, config_dict,
                                                                      storage_dirs):
    server = await start_server(config_dict)
    data = os.urandom(16 * MiB)
    place(storage_dirs[0][0], data)
    place(storage_dirs[0][1], data)
    host, port = server.url.split("//")[1].split(":")

    def hang_up() -> None:
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(f"GET /{sha256(data)} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            sock.recv(65536)

    for _ in range(3):
        await threads.deferToThread(hang_up)
    _, body, complete = await threads.deferToThread(fetch, server.at(sha256(data)))
    assert complete and body == data


class Target:
    """A connection as SendfileBody sees it: takes at most ``per_call`` bytes at a time,
    and now and then nothing at all (the socket is full)."""

    def __init__(self, per_call: int, full_every: int = 3) -> None:
        self.received = b""
        self.per_call = per_call
        self.full_every = full_every
        self.calls = 0
        self.producer = None
        self.sent_before_digest = 0

    def begin(self, producer) -> None:
        self.producer = producer
        producer.resumeProducing()

    def send(self, fd: int, offset: int, count: int) -> int | None:
        self.calls += 1
        if self.calls % self.full_every == 0:
            reactor.callLater(0, self.producer.resumeProducing)  # writable again, soon
            return None
        data = os.pread(fd, min(count, self.per_call), offset)
        assert offset == len(self.received)
        self.received += data
        return len(data)

    def end(self) -> None:
        pass


def run_in_thread(f, *args) -> "Deferred[object]":
    return threads.deferToThread(f, *args)


@pytest_twisted.ensureDeferred
async def test_the_tail_waits_for_the_digest_and_a_full_socket_is_waited_for(tmp_path):
    data = os.urandom(4 * MiB + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    target = Target(per_call=300_000)
    body = SendfileBody(open(path, "rb", buffering=0), str(path), len(data), run_in_thread,
                        sha256(data), reactor.callFromThread)
    await body.write_to(target)
    assert target.received == data


@pytest_twisted.ensureDeferred
async def test_a_mismatch_stops_before_the_tail(tmp_path):
    data = os.urandom(4 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    target = Target(per_call=1 << 20, full_every=1000)
    body = SendfileBody(open(path, "rb", buffering=0), str(path), len(data), run_in_thread,
                        hashlib.sha256(b"something else").hexdigest(), reactor.callFromThread)
    with pytest.raises(CorruptReplica):
        await body.write_to(target)
    assert len(target.received) <= len(data) - TAIL


class HeadersPending(Target):
    """A connection whose answer's headers are still in the transport's buffer: the
    producer must send nothing until the connection resumes it."""

    def begin(self, producer) -> None:
        self.producer = producer  # no resume: the transport does that once the headers are out


@pytest_twisted.ensureDeferred
async def test_nothing_is_sent_before_the_connection_resumes_the_sender(tmp_path):
    """The hashing thread's progress must not start sendfile(2) while the headers wait
    in the transport's buffer: the file's bytes would reach the client before them."""
    data = os.urandom(5 * MiB)
    path = tmp_path / "f"
    path.write_bytes(data)
    jobs: list[Deferred[object]] = []

    def run(f, *args) -> "Deferred[object]":
        jobs.append(threads.deferToThread(f, *args))
        return jobs[-1]

    target = HeadersPending(per_call=1 << 20, full_every=1000)
    body = SendfileBody(open(path, "rb", buffering=0), str(path), len(data), run,
                        sha256(data), reactor.callFromThread)
    done = body.write_to(target)
    await jobs[0]  # the whole file hashed, its progress reported
    assert (target.calls, target.received) == (0, b"")
    body.resumeProducing()  # the headers are out
    await done
    assert target.received == data
