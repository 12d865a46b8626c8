"""Every well-formed GET/HEAD publishes the SHA as requested (docs/SPEC.md §5), through a relay
the test can cut: a broker outage never slows a GET, and publishing resumes by itself."""

import time
import uuid

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, task

from support.amqp import Consumer, Relay, delete_exchange
from support.helpers import AUTH, sha256

pytestmark = pytest.mark.acceptance('rabbitmq')


@pytest_twisted.async_yield_fixture
async def broker_path():
    """A relay to the machine's broker, a consumer on a unique exchange; all removed after."""
    relay = await Relay(reactor).start()
    exchange = f"stor-test-{uuid.uuid4().hex}"
    consumer = await Consumer(reactor, exchange, "sha").start()
    yield relay, consumer
    await consumer.close()
    await relay.stop()
    await delete_exchange(reactor, exchange)


@pytest_twisted.async_fixture
async def publishing(start_server, config_dict, broker_path):
    relay, consumer = broker_path
    config_dict["rabbitmq_uri"] = f"{relay.uri}?exchange={consumer.exchange}&heartbeat=5"
    server = await start_server(config_dict)
    await until_metric(server, "stor_amqp_connected 1.0")
    return server


async def until_metric(server, line: str, timeout: float = 10.0) -> None:
    """Poll ``/metrics`` (what an operator watches) until it shows ``line``."""
    deadline = time.monotonic() + timeout
    while True:
        page = await (await treq.get(server.at("/metrics"))).text()
        if line in page.splitlines():
            return
        assert time.monotonic() < deadline, f"/metrics never showed {line!r}"
        await task.deferLater(reactor, 0.05, lambda: None)


async def timed_gets(server, shas: list[str]) -> float:
    start = time.perf_counter()
    for sha in shas:
        r = await treq.get(server.at(sha))
        await r.content()
    return time.perf_counter() - start


@pytest_twisted.ensureDeferred
async def test_get_and_head_publish_the_sha_as_requested(publishing, broker_path):
    _, consumer = broker_path
    data = b"published"
    r = await treq.post(publishing.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201
    upper = sha256(data).upper()
    missing = "ab" * 32
    for method, sha in (("GET", upper), ("HEAD", sha256(data)), ("GET", missing)):
        r = await treq.request(method, publishing.at(sha))
        await r.content()
    r = await treq.get(publishing.at("not-a-sha"))
    assert r.code == 404
    bodies = await consumer.wait_for(3)
    assert bodies == [upper.encode(), sha256(data).encode(), missing.encode()]


@pytest_twisted.ensureDeferred
async def test_broker_outage_does_not_slow_gets_and_publishing_resumes(publishing, broker_path):
    relay, consumer = broker_path
    connected = [f"{i:064x}" for i in range(40)]
    cut = [f"{i + 1000:064x}" for i in range(40)]
    connected_time = await timed_gets(publishing, connected)
    await consumer.wait_for(len(connected))
    await relay.cut()
    await until_metric(publishing, "stor_amqp_connected 0.0")
    cut_time = await timed_gets(publishing, cut)
    assert cut_time < 3 * connected_time + 0.05, (cut_time, connected_time)
    await relay.restore()
    bodies = await consumer.wait_for(len(connected) + len(cut), timeout=20)
    assert bodies[len(connected):] == [s.encode() for s in cut]
