"""The fast lane answers a plain GET/HEAD of a small cached file exactly as the ordinary
path would: the same headers in the same order, the same body, the same access event and
statsite lines.  A request that arrives in two pieces takes the ordinary path, which
gives the comparison."""

import json
import os
import re

import pytest
import pytest_twisted
import treq
from twisted.internet import endpoints, reactor, task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import globalLogPublisher

from stor.config import parse_config
from stor.http.app import StorApp
from stor.http.site import StorSite
from stor.process.service import build_daemon
from support.helpers import AUTH, sha256
from support.site import Server


class Client(Protocol):
    """A keep-alive connection sending raw bytes and reading raw answers."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: object) -> None:
        self.closed.callback(None)

    async def send(self, *pieces: bytes) -> None:
        for i, piece in enumerate(pieces):
            if i:  # a second read on the server: the request no longer arrives whole
                await task.deferLater(reactor, 0.05, lambda: None)
            self.transport.write(piece)

    async def answer(self, body_length: int) -> tuple[bytes, bytes]:
        """(head, body) of the next answer, once it is all in."""
        for _ in range(400):
            head, sep, rest = self.data.partition(b"\r\n\r\n")
            if sep and len(rest) >= body_length:
                self.data = rest[body_length:]
                return head, rest[:body_length]
            await task.deferLater(reactor, 0.005, lambda: None)
        raise AssertionError(f"no whole answer in {self.data[:200]!r}")


async def connect(server) -> Client:
    port = int(server.url.rsplit(":", 1)[1])
    return await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Client())


def request(method: str, sha: str, *extra: str) -> bytes:
    lines = [f"{method} /{sha} HTTP/1.1", "Host: stor", "User-Agent: lanes", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def without_date(head: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", head)


@pytest.fixture
def events():
    seen: list[dict] = []
    observer = seen.append
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


ACCESS = ("method", "path", "sha", "status", "bytes_sent", "bytes_received", "peer",
          "user_agent", "completed")


@pytest_twisted.async_fixture
async def counted(start_server, config_dict, statsite):
    config_dict["statsite"] = {"host": "127.0.0.1", "port": statsite.port, "prefix": "l"}
    return await start_server(config_dict)


async def stored(server, data: bytes) -> str:
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    await r.content()
    return sha256(data)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_the_fast_answer_is_the_ordinary_answer(counted, statsite, events, method):
    data = os.urandom(4096)
    sha = await stored(counted, data)
    client = await connect(counted)
    size = len(data) if method == "GET" else 0
    await client.send(request(method, sha))  # the first: looked up (and cached) the ordinary way
    await client.answer(size)
    whole = request(method, sha)
    answers, accesses, lines = [], [], []
    # this answer's last line: a HEAD counts no .size/.time (the old service's keys)
    last = r"l\.success\.get\.ok_old\..*\." + ("time" if method == "GET" else "count") + ":.*"
    await statsite.wait_for(last, count=1)  # the first one's lines are in before we count
    for done, pieces in enumerate(((whole[:20], whole[20:]), (whole,)), start=2):
        events.clear()  # the ordinary path first, then the fast lane
        before = len(statsite.lines)
        await client.send(*pieces)
        answers.append(await client.answer(size))
        await statsite.wait_for(last, count=done)
        lines.append(sorted(re.sub(r":[0-9.]+\|", ":N|", l) for l in statsite.lines[before:]))
        access = [e for e in events if e.get("log_namespace") == "stor.access"]
        assert len(access) == 1
        accesses.append({k: access[0][k] for k in ACCESS})
    (ordinary_head, ordinary_body), (fast_head, fast_body) = answers
    assert without_date(fast_head) == without_date(ordinary_head)
    assert fast_body == ordinary_body == (data if method == "GET" else b"")
    assert accesses[0] == accesses[1]
    assert lines[0] == lines[1]


@pytest_twisted.ensureDeferred
async def test_requests_that_change_the_answer_take_the_ordinary_path(counted):
    data = os.urandom(4096)
    sha = await stored(counted, data)
    client = await connect(counted)
    await client.send(request("GET", sha))
    await client.answer(len(data))
    await client.send(request("GET", sha, "Range: bytes=0-9"))
    head, body = await client.answer(10)
    assert head.startswith(b"HTTP/1.1 206 ") and body == data[:10]
    await client.send(request("GET", sha, f'If-None-Match: "{sha}"'))
    head, _ = await client.answer(0)
    assert head.startswith(b"HTTP/1.1 304 ")
    await client.send(request("GET", sha, "Connection: close"))
    head, body = await client.answer(len(data))
    assert b"\r\nConnection: close" in head and body == data


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(counted):
    files = [os.urandom(1000 + i) for i in range(3)]
    shas = [await stored(counted, f) for f in files]
    client = await connect(counted)
    for sha, data in zip(shas, files):  # cached, so the fast lane could answer each
        await client.send(request("GET", sha))
        await client.answer(len(data))
    await client.send(b"".join(request("GET", sha) for sha in shas))
    for data in files:
        head, body = await client.answer(len(data))
        assert head.startswith(b"HTTP/1.1 200 ") and body == data


@pytest_twisted.ensureDeferred
async def test_a_corrupt_cached_replica_is_not_served_by_the_fast_lane(counted, storage_dirs):
    data = os.urandom(4096)
    sha = await stored(counted, data)
    client = await connect(counted)
    await client.send(request("GET", sha))
    await client.answer(len(data))
    for pair in storage_dirs:  # whichever replica is cached: rot it
        for storage in pair:
            path = os.path.join(storage, sha[:2].upper(), sha[2:4].upper(), sha[4:6].upper(),
                                sha.upper() + ".dat")
            if os.path.exists(path):
                with open(path, "r+b") as f:
                    f.write(b"\0")
                break
    for _ in range(3):  # the rotten one is cached or not: either way the right bytes
        await client.send(request("GET", sha))
        head, body = await client.answer(len(data))
        assert head.startswith(b"HTTP/1.1 200 ") and body == data


@pytest.mark.parametrize("odd", [b"No colon here", b" folded: line", b"Connection: close",
                                 b"Content-Length: 0", b"Transfer-Encoding: chunked"])
@pytest_twisted.ensureDeferred
async def test_an_unusual_request_is_left_to_the_ordinary_path(counted, odd):
    data = os.urandom(100)
    sha = await stored(counted, data)
    whole = request("GET", sha)[:-2] + odd + b"\r\n\r\n"
    last = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"  # then the server closes
    everything = []
    for pieces in ((whole[:10], whole[10:] + last), (whole + last,)):  # ordinary, then offered
        client = await connect(counted)
        await client.send(request("GET", sha))  # cached from now on
        await client.answer(len(data))
        await client.send(*pieces)
        await client.closed
        everything.append(without_date(client.data))
    assert everything[0] == everything[1]


class CountingStore:
    """The daemon's store, seen by the routes through its interface, counting the reads
    the routes begin: the one door, measured from the HTTP side."""

    def __init__(self, store) -> None:
        self._store = store
        self.reads = 0

    def read(self, *args, **kwargs):
        self.reads += 1
        return self._store.read(*args, **kwargs)

    def read_nowait(self, *args, **kwargs):  # a second way in, had the routes one
        self.reads += 1
        return self._store.read_nowait(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._store, name)


@pytest_twisted.async_yield_fixture
async def door(config_dict):
    """A site whose routes see the store through :class:`CountingStore`."""
    config = parse_config(json.loads(json.dumps(config_dict)))
    daemon = build_daemon(config, reactor)
    daemon.services.startService()
    store = CountingStore(daemon.store)
    site = StorSite(StorApp(store, basic_auth=config.basic_auth))
    port = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)
    yield Server(f"http://127.0.0.1:{port.getHost().port}", config, port), store
    await port.stopListening()
    await maybeDeferred(daemon.services.stopService)


@pytest.mark.parametrize("size, extra, status", [
    (100, (), 200),  # small, remembered: the fast lane answers
    (300_000, (), 200),  # streamed: the fast lane begins, the ordinary path goes on
    (100, ("Range: bytes=0-9",), 206),  # the ordinary path from the start
    (None, (), 404),  # nowhere: begun by the fast lane, answered by the ordinary path
])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest_twisted.ensureDeferred
async def test_a_read_enters_the_store_once(door, method, size, extra, status):
    server, store = door
    data = os.urandom(size or 10)
    sha = await stored(server, data) if size else sha256(data)
    client = await connect(server)
    for _ in range(2):  # the second time the path is remembered
        store.reads = 0
        await client.send(request(method, sha, *extra))
        head, body = await _whole(client, method)
        assert head.startswith(b"HTTP/1.1 %d " % status), head
        assert store.reads == 1
        if status == 200 and method == "GET":
            assert body == data
    client.transport.loseConnection()
    await client.closed


async def _whole(client: Client, method: str) -> tuple[bytes, bytes]:
    """The next answer, its body as long as its Content-Length says (none for a HEAD)."""
    for _ in range(400):
        if b"\r\n\r\n" in client.data:
            break
        await task.deferLater(reactor, 0.005, lambda: None)
    found = re.search(rb"\r\ncontent-length: *(\d+)", client.data.partition(b"\r\n\r\n")[0], re.I)
    length = int(found[1]) if found and method != "HEAD" else 0
    return await client.answer(length)
