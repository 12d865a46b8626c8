"""``X-Forwarded-For`` from ``trusted_proxies`` names the client in the access
event and the DELETE audit line; from anyone else it is ignored."""

import ipaddress
from collections.abc import Iterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from support.helpers import AUTH, raw_http, sha256
from test_fastlane import connect
from stor.config import ConfigError, parse_config
from stor.http.forwarded import client_of

NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1")]


@pytest.mark.parametrize("peer, header, client", [
    ("127.0.0.1", [b"203.0.113.7"], "203.0.113.7"),
    ("127.0.0.1", [b"203.0.113.7, 10.1.2.3"], "203.0.113.7"),  # through two balancers
    ("127.0.0.1", [b"198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the client wrote the first
    ("127.0.0.1", [b"198.51.100.1", b"203.0.113.7"], "203.0.113.7"),  # two header lines
    ("192.0.2.9", [b"203.0.113.7"], "192.0.2.9"),  # not a trusted peer: its header is ignored
    ("127.0.0.1", [b"not an address"], "127.0.0.1"),
    ("127.0.0.1", [b"10.9.9.9"], "10.9.9.9"),  # only proxies: the farthest one
    ("127.0.0.1", None, "127.0.0.1"),
    ("::ffff:127.0.0.1", [b"2001:db8::1"], "2001:db8::1"),
])
def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy(peer, header, client):
    assert client_of(peer, header, NETS) == client


def test_trusted_proxies_must_be_addresses_or_networks(config_dict):
    config_dict["trusted_proxies"] = ["10.0.0.0/8", "balancer.example"]
    with pytest.raises(ConfigError, match=r"trusted_proxies\[1\]: 'balancer.example' is not"):
        parse_config(config_dict)


@pytest.fixture
def access_events() -> Iterator[list[dict]]:
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "stor.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def get_request(sha: str, extra: str = "") -> bytes:
    return f"GET /{sha} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.7\r\n{extra}\r\n".encode()


@pytest.mark.parametrize("trusted, seen", [(["127.0.0.1"], "203.0.113.7"), (None, "127.0.0.1")])
@pytest_twisted.ensureDeferred
async def test_access_events_name_the_forwarded_client_only_from_a_trusted_peer(
        start_server, config_dict, access_events, trusted, seen):
    config_dict["trusted_proxies"] = trusted
    config_dict["delete_auth"] = "admin:admin_pass"
    server = await start_server(config_dict)
    data = b"forwarded"
    sha = sha256(data)
    r = await treq.post(server.at(sha), data=data, auth=AUTH,
                        headers={"X-Forwarded-For": "203.0.113.7"})
    assert r.code == 201
    client = await connect(server)  # keep-alive: the fast lane (cached path, small file)
    await client.send(get_request(sha))
    assert (await client.answer(len(data)))[1] == data
    client.transport.loseConnection()
    await raw_http(server.url, get_request(sha, "Range: bytes=0-1\r\nConnection: close\r\n"))
    audit: Deferred[dict] = Deferred()

    def observe(event: dict) -> None:
        if "deleted {sha}" in event.get("log_format", "") and not audit.called:
            audit.callback(event)

    globalLogPublisher.addObserver(observe)
    try:
        r = await treq.delete(server.at(sha), auth=("admin", "admin_pass"),
                              headers={"X-Forwarded-For": "203.0.113.7"})
        assert r.code == 204
        event = await audit.addTimeout(5, reactor)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert event["client"] == seen
    ours = [e for e in access_events if e["sha"] == sha]
    assert [(e["method"], e["status"]) for e in ours] == [
        ("POST", 201), ("GET", 200), ("GET", 206), ("DELETE", 204)]
    assert {e["peer"] for e in ours} == {seen}
