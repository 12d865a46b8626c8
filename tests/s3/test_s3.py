"""The S3 read-through against real peers: moto (signatures checked), a black
hole, a refused port and a scripted TCP server for answers moto cannot give.

Bodies are fetched the way a client of stor would: a twisted.web site on a
loopback port relays ``S3Object.write_to`` and a treq client reads it.
"""

import hashlib
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from treq.client import HTTPClient

from support.s3 import MotoS3, ScriptedPeer, black_hole, refused_port, response
from stor.core import layout
from stor.config import Config, S3Config
from stor.core.errors import S3Unavailable, StorageFailure
from stor.s3 import read as read_module
from stor.s3.read import BAD_SHA, ERROR, NOT_FOUND, NoS3, S3Object, S3Reader, build_s3, s3_client
from support.helpers import sha256

MiB = 1024 * 1024
WAIT = 10.0  # upper bound on any single wait in these tests; never reached when green


def bounded(d: "Deferred[Any]", seconds: float = WAIT) -> "Deferred[Any]":
    """``d``, but failing instead of hanging the suite if it never fires."""
    return d.addTimeout(seconds, reactor)


class RecordingMetrics:
    """A Metrics that remembers what it was told."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.timings: list[tuple[str, float]] = []

    def incr(self, key: str, value: int = 1) -> None:
        self.counts[key] += value

    def timing(self, key: str, ms: float) -> None:
        self.timings.append((key, ms))


# -- peers and readers ------------------------------------------------------


Reader = tuple[S3Reader, RecordingMetrics]


@pytest_twisted.async_yield_fixture
async def make_reader():
    """Build S3Readers with their own connection pools, all closed afterwards."""
    pools: list[HTTPConnectionPool] = []

    def make(endpoint: str, bucket: str = "samples", access_key: str = "AKIAEXAMPLE",
             secret_key: str = "secret", timeout: float = 5.0,
             connect_timeout: float = 2.0) -> Reader:
        config = S3Config(access_key=access_key, secret_key=secret_key, endpoint=endpoint,
                          bucket=bucket, connect_timeout=connect_timeout, timeout=timeout)
        pool = HTTPConnectionPool(reactor, persistent=True)
        pools.append(pool)
        metrics = RecordingMetrics()
        return S3Reader(config, s3_client(config, reactor, pool), reactor, metrics), metrics

    yield make
    for pool in pools:
        await pool.closeCachedConnections()


@pytest.fixture
def moto_reader(make_reader: Callable[..., Reader], moto: MotoS3, bucket: str) -> Reader:
    return make_reader(moto.endpoint, bucket, moto.access_key, moto.secret_key)


@pytest_twisted.async_yield_fixture
async def scripted():
    """Start ScriptedPeers on loopback ports; stopped afterwards."""
    ports = []

    def start(answer: bytes, then: str = "close") -> tuple[ScriptedPeer, str]:
        peer = ScriptedPeer(answer, then)
        port = reactor.listenTCP(0, peer, interface="127.0.0.1")
        ports.append(port)
        return peer, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        await port.stopListening()


# -- a stor-like route and a client ----------------------------------------


class RelayResource(Resource):
    """GET /<sha>: what the stor route does with an S3 hit, and nothing more."""

    isLeaf = True

    def __init__(self, reader: S3Reader) -> None:
        super().__init__()
        self.reader = reader
        self.outcomes: list[Deferred[BaseException | None]] = []

    def render_GET(self, request: Any) -> Any:
        outcome: Deferred[BaseException | None] = Deferred()
        self.outcomes.append(outcome)
        ensureDeferred(self._serve(request, outcome))
        return NOT_DONE_YET

    async def _serve(self, request: Any, outcome: "Deferred[BaseException | None]") -> None:
        found = await self.reader.fetch(request.postpath[0].decode(), head=False)
        if found is None:
            request.setResponseCode(404)
            request.finish()
            outcome.callback(None)
            return
        request.setHeader(b"content-length", b"%d" % found.size)
        request.setHeader(b"last-modified", found.last_modified)
        try:
            await found.write_to(request)
        except Exception as e:  # as stor's route does: a body not completed cuts the connection
            if request.channel is not None:
                request.transport.abortConnection()
            outcome.callback(e)
            return
        request.finish()
        outcome.callback(None)


@pytest_twisted.async_yield_fixture
async def relay():
    """Serve a RelayResource for a reader on a loopback port; returns (resource, url)."""
    ports = []

    def start(reader: S3Reader) -> tuple[RelayResource, str]:
        resource = RelayResource(reader)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        ports.append(port)
        return resource, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        await port.stopListening()


class BodyReader(Protocol):
    """Hashes and counts a response body; can read slowly or hang up part-way."""

    def __init__(self, pause_at: int | None = None, pause_for: float = 0.0,
                 hang_up_at: int | None = None) -> None:
        self.received = 0
        self.hash = hashlib.sha256()
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()
        self._pause_at = pause_at
        self._pause_for = pause_for
        self._hang_up_at = hang_up_at

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        self.hash.update(data)
        if self._hang_up_at is not None and self.received >= self._hang_up_at:
            self._hang_up_at = None
            self.transport.stopProducing()
        if self._pause_at is not None and self.received >= self._pause_at:
            self._pause_at = None
            self.transport.pauseProducing()
            reactor.callLater(self._pause_for, self.transport.resumeProducing)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason  # not the Deferred's result: a Failure would errback it
        self.done.callback(None)


@dataclass
class Download:
    """What a client of stor saw."""

    code: int | None  # None: no response at all
    length: Any = None  # the Content-Length announced (twisted keeps it out of headers)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    received: int = 0
    sha: str = ""
    complete: bool = False  # the body ended cleanly at its Content-Length


async def download(url: str, **reading: Any) -> Download:
    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    try:
        answer = await bounded(client.get(url, unbuffered=True))
    except Exception:
        return Download(code=None)
    body = BodyReader(**reading)
    answer.deliverBody(body)
    await bounded(body.done, 60)
    headers = {k.lower(): v[0] for k, v in answer.headers.getAllRawHeaders()}
    return Download(answer.code, answer.length, headers, body.received, body.hash.hexdigest(),
                    body.reason is not None and body.reason.check(ResponseDone) is not None)


# -- moto: objects that exist, do not exist, or are refused -------------------


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_head_finds_size_and_last_modified(moto, bucket, moto_reader):
    reader, metrics = moto_reader
    data = b"head me " * 1000
    moto.put(bucket, layout.s3_key(sha256(data)), data)

    found = await reader.fetch(sha256(data).upper(), head=True)

    assert isinstance(found, S3Object)
    assert found.size == len(data)
    assert found.last_modified == moto.head(bucket, layout.s3_key(sha256(data)))["last-modified"].encode()
    found.discard()
    assert +metrics.counts == Counter()


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_get_relays_whole_body_with_headers(moto, bucket, moto_reader, relay):
    reader, metrics = moto_reader
    data = os.urandom(3 * MiB + 17)
    moto.put(bucket, layout.s3_key(sha256(data)), data)
    resource, url = relay(reader)

    seen = await download(f"{url}/{sha256(data)}")

    assert (seen.code, seen.complete, seen.received, seen.sha) == (200, True, len(data), sha256(data))
    assert seen.length == len(data)
    assert seen.headers[b"last-modified"] == moto.head(bucket, layout.s3_key(sha256(data)))["last-modified"].encode()
    assert await resource.outcomes[0] is None
    assert +metrics.counts == Counter()


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_empty_object(moto, bucket, moto_reader, relay):
    reader, _ = moto_reader
    moto.put(bucket, layout.s3_key(sha256(b"")), b"")
    resource, url = relay(reader)

    seen = await download(f"{url}/{sha256(b'')}")

    assert (seen.code, seen.complete, seen.received) == (200, True, 0)
    assert await resource.outcomes[0] is None


@pytest.mark.acceptance('moto')
@pytest.mark.parametrize("head", [True, False], ids=["HEAD", "GET"])
@pytest_twisted.ensureDeferred
async def test_missing_object_is_none_and_counted(moto_reader, head):
    reader, metrics = moto_reader

    assert await reader.fetch(sha256(b"never stored"), head=head) is None
    assert +metrics.counts == Counter({NOT_FOUND: 1})


@pytest.mark.acceptance('moto')
@pytest.mark.parametrize("head", [True, False], ids=["HEAD", "GET"])
@pytest.mark.parametrize("wrong", ["secret", "access_key"])
@pytest_twisted.ensureDeferred
async def test_wrong_credentials_are_an_s3_error(moto, bucket, make_reader, head, wrong):
    """moto checks SigV4 signatures here (auth is switched on in s3_peer)."""
    data = b"signed for"
    moto.put(bucket, layout.s3_key(sha256(data)), data)
    keys = {"access_key": moto.access_key, "secret_key": moto.secret_key}
    keys["secret_key" if wrong == "secret" else "access_key"] = "AKIAWRONGWRONGWRONG0"
    reader, metrics = make_reader(moto.endpoint, bucket, **keys)

    assert await reader.fetch(sha256(data), head=head) is None
    assert +metrics.counts == Counter({ERROR: 1})


@pytest_twisted.ensureDeferred
async def test_refused_connection_is_unknown_quickly(make_reader):
    """A refused connection says nothing about the object: S3 is unknown (not None),
    and as refusing costs nothing, S3 is asked again next time (no outage)."""
    reader, metrics = make_reader(f"http://127.0.0.1:{refused_port()}",
                                  timeout=5.0, connect_timeout=5.0)
    start = time.monotonic()

    with pytest.raises(S3Unavailable, match="refused"):
        await bounded(reader.fetch(sha256(b"x"), head=False))
    assert time.monotonic() - start < 2.0
    assert +metrics.counts == Counter({ERROR: 1})
    assert not reader.down


@pytest.mark.parametrize("head", [True, False], ids=["HEAD", "GET"])
@pytest_twisted.ensureDeferred
async def test_silent_peer_times_out_then_fails_at_once(make_reader, head):
    """A hung S3 costs one timeout per outage, not one per lookup."""
    with black_hole() as port:
        reader, metrics = make_reader(f"http://127.0.0.1:{port}", timeout=0.5)
        start = time.monotonic()

        with pytest.raises(S3Unavailable, match="no answer within 0.5s"):
            await bounded(reader.fetch(sha256(b"x"), head=head))
        elapsed = time.monotonic() - start
        assert reader.down
        start = time.monotonic()
        with pytest.raises(S3Unavailable):
            await bounded(reader.fetch(sha256(b"y"), head=head))
        again = time.monotonic() - start

    assert 0.5 <= elapsed < 5.0
    assert again < 0.2
    assert +metrics.counts == Counter({ERROR: 1})


@pytest_twisted.ensureDeferred
async def test_outage_ends_when_s3_answers_a_probe(make_reader, monkeypatch):
    """While down, a lookup starts a background probe; S3's first answer ends the outage."""
    monkeypatch.setattr(read_module, "PROBE_INTERVAL", 0.0)
    with black_hole() as port:
        reader, _ = make_reader(f"http://127.0.0.1:{port}", timeout=0.3)
        with pytest.raises(S3Unavailable):
            await bounded(reader.fetch(sha256(b"x"), head=False))
        assert reader.down
    peer = ScriptedPeer(response("404 Not Found", content_length=0))
    listening = reactor.listenTCP(port, peer, interface="127.0.0.1")  # S3 is back
    try:
        with pytest.raises(S3Unavailable):  # still taken for down: answered at once
            await bounded(reader.fetch(sha256(b"x"), head=False))
        await bounded(reader.when_up())  # the probe was answered
        assert len(peer.requests) == 1 and peer.requests[0].startswith(b"HEAD ")
        assert await bounded(reader.fetch(sha256(b"x"), head=False)) is None
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancelled_fetch_is_not_an_s3_error(make_reader):
    """The route's caller (Klein) cancels when its client leaves: no warning, no count."""
    with black_hole() as port:
        reader, metrics = make_reader(f"http://127.0.0.1:{port}", timeout=5.0)
        asking = reader.fetch(sha256(b"x"), head=False)
        reactor.callLater(0.05, asking.cancel)

        with pytest.raises(CancelledError):
            await bounded(asking)

    assert +metrics.counts == Counter()


# -- content that is not what its name says ----------------------------------


@pytest.mark.acceptance('moto')
@pytest.mark.parametrize("size", [5, MiB], ids=["one-chunk", "many-chunks"])
@pytest_twisted.ensureDeferred
async def test_wrong_content_never_reaches_client_whole(moto, bucket, moto_reader, relay, size):
    reader, metrics = moto_reader
    claimed = sha256(b"what the client asked for")
    moto.put(bucket, layout.s3_key(claimed), os.urandom(size))
    resource, url = relay(reader)

    seen = await download(f"{url}/{claimed}")

    assert not seen.complete
    assert seen.received < size
    assert seen.code is None or seen.length == size  # no answer at all, or a short one
    assert isinstance(await resource.outcomes[0], StorageFailure)
    assert +metrics.counts == Counter({BAD_SHA: 1})
    # remembered: not fetched from S3 again, the route falls through
    assert await reader.fetch(claimed, head=False) is None
    assert await reader.fetch(claimed, head=True) is None
    assert (await download(f"{url}/{claimed}")).code == 404


# -- big objects: streamed, never held --------------------------------------


def _status_kib(name: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{name}:\s+(\d+) kB", text, re.M).group(1))


def _reset_peak_rss() -> bool:
    """Make VmHWM restart from the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_100_mib_streams_with_bounded_memory(moto, bucket, moto_reader, relay, tmp_path):
    """The client stops reading for a second after 1 MiB: with back-pressure the
    S3 connection is paused too; without it all 100 MiB would pile up in this
    process (the relay's and the client's side both live here).  The peak RSS
    of the whole test process during the transfer is the measure: it catches any
    buffering, wherever it happens, which counting one buffer would not."""
    reader, metrics = moto_reader
    size = 100 * MiB
    block, digest = os.urandom(MiB), hashlib.sha256()
    source = tmp_path / "big"
    with source.open("wb") as f:
        for _ in range(size // MiB):
            f.write(block)
            digest.update(block)
    sha = digest.hexdigest()
    with source.open("rb") as f:
        moto.put(bucket, layout.s3_key(sha), f)
    resource, url = relay(reader)

    exact_peak = _reset_peak_rss()
    before = _status_kib("VmRSS")
    sampled_peak = [before]
    sampler = LoopingCall(lambda: sampled_peak.append(_status_kib("VmRSS")))
    sampler.clock = reactor
    sampler.start(0.01)
    try:
        seen = await download(f"{url}/{sha}", pause_at=MiB, pause_for=1.0)
    finally:
        sampler.stop()
    peak = max(max(sampled_peak), _status_kib("VmHWM") if exact_peak else 0)

    assert (seen.code, seen.complete, seen.received, seen.sha) == (200, True, size, sha)
    assert await resource.outcomes[0] is None
    growth_mib = (peak - before) / 1024
    assert growth_mib < 40, f"RSS grew by {growth_mib:.1f} MiB while relaying 100 MiB"
    assert +metrics.counts == Counter()


# -- answers only a scripted peer gives --------------------------------------

XML_500 = b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"


@pytest.mark.parametrize("answer, unknown", [
    (response("500 Internal Server Error", body=XML_500, content_length=len(XML_500)), True),
    (response("503 Slow Down", content_length=0), True),
    (response("301 Moved Permanently", {"Location": "http://example.invalid/"},
              content_length=0), False),
    (response("403 Forbidden", content_length=0), False),
    (b"this is not HTTP\r\n\r\n", True),
    (response("200 OK", {"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n"), True),
    (response("200 OK", {"Last-Modified": ""}, b"hello", content_length=5), True),
], ids=["500", "503", "redirect", "403", "garbage", "no-length", "no-last-modified"])
@pytest_twisted.ensureDeferred
async def test_unusable_answers_are_counted_and_unknown_unless_a_refusal(
        scripted, make_reader, answer, unknown):
    """A 5xx or an unreadable answer leaves the object's existence unknown; a
    4xx is S3 refusing to serve it: not found (a 403 is logged as a config error)."""
    peer, endpoint = scripted(answer)
    reader, metrics = make_reader(endpoint)

    if unknown:
        with pytest.raises(S3Unavailable):
            await bounded(reader.fetch(sha256(b"hello"), head=False))
    else:
        assert await bounded(reader.fetch(sha256(b"hello"), head=False)) is None
    assert +metrics.counts == Counter({ERROR: 1})
    assert not reader.down
    assert len(peer.requests) == 1
    request = peer.requests[0].decode()
    assert request.startswith(f"GET /samples/{layout.s3_key(sha256(b'hello'))} HTTP/1.1")
    assert "x-amz-content-sha256: " + sha256(b"") in request.lower()


@pytest_twisted.ensureDeferred
async def test_body_cut_short_breaks_transfer_but_is_not_blamed(scripted, make_reader, relay):
    data = os.urandom(300_000)
    peer, endpoint = scripted(response(body=data[:200_000], content_length=len(data)))
    reader, metrics = make_reader(endpoint)
    resource, url = relay(reader)

    seen = await download(f"{url}/{sha256(data)}")

    assert seen.code == 200 and seen.length == len(data)
    assert not seen.complete and seen.received < 200_000
    assert isinstance(await resource.outcomes[0], StorageFailure)
    assert +metrics.counts == Counter({ERROR: 1})
    again = await reader.fetch(sha256(data), head=False)  # a network fault: S3 is asked again
    assert isinstance(again, S3Object) and peer.connections == 2
    again.discard()


@pytest_twisted.ensureDeferred
async def test_body_stalling_breaks_transfer_after_timeout(scripted, make_reader, relay):
    data = os.urandom(300_000)
    peer, endpoint = scripted(response(body=data[:200_000], content_length=len(data)), "stall")
    reader, metrics = make_reader(endpoint, timeout=0.5)
    resource, url = relay(reader)
    start = time.monotonic()

    seen = await download(f"{url}/{sha256(data)}")

    assert time.monotonic() - start >= 0.5
    assert seen.code == 200 and not seen.complete and seen.received < 200_000
    assert isinstance(await resource.outcomes[0], StorageFailure)
    assert +metrics.counts == Counter({ERROR: 1})
    await bounded(peer.lost_connections(1))


@pytest_twisted.ensureDeferred
async def test_client_hang_up_closes_s3_connection(scripted, make_reader, relay):
    """The S3 peer keeps the body open (stalled) far longer than the test runs:
    only the client's hang-up can be what closes it."""
    size = 10 * MiB
    peer, endpoint = scripted(response(body=os.urandom(256 * 1024), content_length=size), "stall")
    reader, metrics = make_reader(endpoint, timeout=60.0)
    resource, url = relay(reader)

    seen = await download(f"{url}/{sha256(b'big')}", hang_up_at=1)

    assert seen.code == 200 and 0 < seen.received < size and not seen.complete
    assert isinstance(await bounded(resource.outcomes[0]), CancelledError)
    await bounded(peer.lost_connections(1))
    assert +metrics.counts == Counter()


@pytest_twisted.ensureDeferred
async def test_discard_closes_unread_body(scripted, make_reader):
    peer, endpoint = scripted(response(body=b"x" * 1000, content_length=10 * MiB), "stall")
    reader, _ = make_reader(endpoint, timeout=60.0)

    found = await bounded(reader.fetch(sha256(b"big"), head=False))
    assert isinstance(found, S3Object) and found.size == 10 * MiB
    found.discard()

    await bounded(peer.lost_connections(1))


# -- wiring -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_s3_configured():
    base = Config(storage_pairs=(("/a", "/b"),))
    none = build_s3(base, reactor, RecordingMetrics())
    assert isinstance(none, NoS3)
    assert await none.fetch(sha256(b"x"), head=False) is None

    s3 = S3Config(access_key="a", secret_key="b", endpoint="http://127.0.0.1:9")
    built = build_s3(Config(storage_pairs=(("/a", "/b"),), s3=s3), reactor, RecordingMetrics())
    assert isinstance(built, S3Reader)
    assert built.url("AB" * 32) == f"http://127.0.0.1:9/samples/ab/ab/ab/{'ab' * 32}"
