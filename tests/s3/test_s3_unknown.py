"""A local miss while S3 cannot say (docs/SPEC.md §9, docs/fleet-operations.rst):
503 + Retry-After, never a 404 for a file the bucket may hold; a 403 stays a 404.

Real peers: moto's server (signatures checked), a refused port, a socket that
accepts and never answers, and a scripted peer answering 500."""

import time
from collections.abc import Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, globalLogPublisher

from support.helpers import AUTH, sha256
from support.ports import refused_port
from support.s3 import ScriptedPeer, black_hole, response
from test_s3_read import s3_config

pytestmark = pytest.mark.acceptance('moto')

BODY = "S3 unavailable: '{}' not found locally\n"


@pytest.fixture
def config_errors() -> Iterator["Deferred[dict]"]:
    """Fires with the first error-level event saying "configuration error"."""
    seen: Deferred[dict] = Deferred()

    def observe(event: dict) -> None:
        if (event.get("log_level") == LogLevel.error and not seen.called
                and "configuration error" in event.get("log_format", "")):
            seen.callback(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def assert_s3_unknown(r, body: bytes, segment: str) -> None:
    assert r.code == 503
    assert r.headers.getRawHeaders(b"retry-after") == [b"1"]
    assert r.headers.getRawHeaders(b"stor-s3") == [b"unavailable"]
    assert body == BODY.format(segment).encode()


async def stor_with_s3_at(start_server, config_dict, statsite, moto, endpoint, **extra):
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "s"}
    config_dict.update(extra)
    return await start_server(s3_config(config_dict, endpoint, "samples", moto,
                                        timeout=extra.pop("timeout", 5.0)))


@pytest.mark.parametrize("read", ["first", "fallback"])
@pytest_twisted.ensureDeferred
async def test_refused_s3_and_local_miss_is_503_not_404(start_server, config_dict, statsite,
                                                        moto, read):
    server = await stor_with_s3_at(start_server, config_dict, statsite, moto,
                                   f"127.0.0.1:{refused_port()}", s3_read=read)
    segment = sha256(b"maybe in the bucket").upper()
    r = await treq.get(server.at(segment))
    assert_s3_unknown(r, await r.content(), segment)
    r = await treq.head(server.at(segment))
    assert r.code == 503 and r.headers.getRawHeaders(b"retry-after") == [b"1"]
    await statsite.wait_for(r"s\.error\.get\.s3_unknown\.count:1\|c", count=2)
    assert not statsite._matching(r"not_found_old")
    data = b"stored here: served whatever S3 does"
    assert (await treq.post(server.at(sha256(data)), data=data, auth=AUTH)).code == 201
    r = await treq.get(server.at(sha256(data)))
    assert r.code == 200 and await r.content() == data


@pytest_twisted.ensureDeferred
async def test_s3_answering_500_and_local_miss_is_503(start_server, config_dict, statsite, moto):
    peer = ScriptedPeer(response("500 Internal Server Error", content_length=0))
    port = reactor.listenTCP(0, peer, interface="127.0.0.1")
    try:
        server = await stor_with_s3_at(start_server, config_dict, statsite, moto,
                                       f"127.0.0.1:{port.getHost().port}")
        segment = sha256(b"x")
        r = await treq.get(server.at(segment))
        assert_s3_unknown(r, await r.content(), segment)
        assert len(peer.requests) == 1
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_hung_s3_costs_one_timeout_per_outage(start_server, config_dict, statsite, moto):
    """The first miss waits s3_timeout; the next ones, and local hits, answer at once."""
    with black_hole() as hung:
        server = await stor_with_s3_at(start_server, config_dict, statsite, moto,
                                       f"127.0.0.1:{hung}", timeout=0.5)
        data = b"a local file while S3 hangs"
        assert (await treq.post(server.at(sha256(data)), data=data, auth=AUTH)).code == 201
        started = time.monotonic()
        r = await treq.get(server.at(sha256(b"first miss")))
        assert_s3_unknown(r, await r.content(), sha256(b"first miss"))
        assert time.monotonic() - started >= 0.45
        for segment in (sha256(b"second miss"), sha256(b"third miss")):
            started = time.monotonic()
            r = await treq.get(server.at(segment))
            assert_s3_unknown(r, await r.content(), segment)
            assert time.monotonic() - started < 0.3
        started = time.monotonic()
        r = await treq.get(server.at(sha256(data)))
        assert r.code == 200 and await r.content() == data
        assert time.monotonic() - started < 0.3


@pytest_twisted.ensureDeferred
async def test_forbidden_is_a_404_logged_as_a_configuration_error(
        start_server, config_dict, statsite, moto, config_errors):
    config_dict["statsite"] = {"host": f"127.0.0.1:{statsite.port}", "prefix": "s"}
    s3_config(config_dict, moto.endpoint, "samples", moto)
    config_dict["s3_credentials"]["secret_key"] = "not the secret"
    server = await start_server(config_dict)
    segment = sha256(b"refused by the bucket")
    r = await treq.get(server.at(segment))
    assert r.code == 404
    assert await r.content() == (f"Caught failure::stor::filenotfound: File '{segment}' "
                                 "not found\n").encode()
    await statsite.wait_for(r"s\.error\.get\.not_found_old\.count:1\|c")
    event = await config_errors.addTimeout(5, reactor)
    assert event["status"] == 403 and "SignatureDoesNotMatch" in event["code"]
