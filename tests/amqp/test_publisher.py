"""stor.amqp.publish: URI parsing (pure) and publishing through a cuttable relay to the real broker."""

import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.logger import formatEvent, globalLogPublisher

from support.amqp import Consumer, Relay, amqp_methods, delete_exchange, eventually
import pika

from stor.config.amqp import split_amqp_uri
from stor.core.reconnect import quiet
from stor.amqp.publish import (
    BACKOFF, CONNECTED, DISCONNECTED, DROPPED, AmqpPublisher, NoPublisher, build_publisher,
)


def parse_amqp_uri(uri: str) -> tuple[pika.URLParameters, str, str]:
    """What the publisher is built from: pika's parameters, the exchange, the routing key."""
    amqp = split_amqp_uri(uri)
    return pika.URLParameters(amqp.url), amqp.exchange, amqp.routing_key


class Retries:
    """A fast backoff policy (the tests wait for reconnections, not for production delays)
    that records what it is asked: ``calls[i]`` is the failure count, less one, before retry i."""

    MAXIMUM = 0.2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, failures: int) -> float:
        self.calls.append(failures)
        return min(0.05 * 2**failures, self.MAXIMUM)


def shas(n: int, tag: str = "") -> list[str]:
    """``n`` distinct, well-formed SHAs in mixed case (published as requested); ``tag`` is hex."""
    prefix = uuid.uuid4().hex[:8] + tag
    return [f"{prefix}{i:0{64 - len(prefix)}X}" for i in range(n)]


class RecordingMetrics:
    """Counts what the publisher reports."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def incr(self, key: str, value: int = 1) -> None:
        self.counts[key] += value

    def timing(self, key: str, ms: float) -> None:
        pass


def active_delayed_calls() -> set[Any]:
    return {c for c in reactor.getDelayedCalls() if c.active()}


async def lingering_calls(before: set[Any]) -> set[Any]:
    """Timers still pending one reactor turn later that were not there ``before``.

    The turn lets zero-delay bookkeeping (e.g. the relay's own aborted sockets)
    run; what remains would fire later: a reconnect, a watchdog, a heartbeat.
    """
    await task.deferLater(reactor, 0, lambda: None)
    return active_delayed_calls() - before


# -- pure: URI parsing, backoff, build_publisher --------------------------------


def test_parse_defaults() -> None:
    params, exchange, routing_key = parse_amqp_uri("amqp://guest:guest@localhost/")
    assert (exchange, routing_key) == ("stor", "sha")
    assert params.heartbeat == 60
    assert (params.host, params.port, params.virtual_host) == ("localhost", 5672, "/")
    assert params.ssl_options is None
    assert (params.credentials.username, params.credentials.password) == ("guest", "guest")


def test_parse_overrides() -> None:
    params, exchange, routing_key = parse_amqp_uri(
        "amqps://us%40r:p%3Ass@mq.example:5999/v%2Fhost"
        "?heartbeat=30&exchange=files&routing_key=seen.sha&channel_max=10"
    )
    assert (exchange, routing_key) == ("files", "seen.sha")
    assert params.heartbeat == 30
    assert params.channel_max == 10  # pika's own parameters pass through
    assert (params.host, params.port, params.virtual_host) == ("mq.example", 5999, "v/host")
    assert (params.credentials.username, params.credentials.password) == ("us@r", "p:ss")
    assert params.ssl_options is not None


def test_parse_amqps_default_port_and_heartbeat_zero() -> None:
    params, _, _ = parse_amqp_uri("amqps://h?heartbeat=0")
    assert params.port == 5671
    assert params.heartbeat == 0  # 0 turns heartbeats off, as in pika


def test_parse_empty_overrides_mean_defaults() -> None:
    _, exchange, routing_key = parse_amqp_uri("amqp://h/?exchange=&routing_key=")
    assert (exchange, routing_key) == ("stor", "sha")


@pytest.mark.parametrize("uri", [
    "amqp://h/?bogus=1",
    "amqp://h/?exchange=a&exchange=b",
    "amqp://h/?heartbeat=often",
    "http://h/",
])
def test_parse_rejects(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_amqp_uri(uri)


def test_backoff_doubles_from_half_a_second_up_to_30s_plus_at_most_1s_of_jitter() -> None:
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for n, base in enumerate(bases):
        delays = [BACKOFF(n) for _ in range(50)]
        assert all(base <= d < base + 1.0 for d in delays), (n, delays)
        assert len(set(delays)) > 1  # jittered: a fleet does not reconnect in lock-step
    assert BACKOFF(10_000) < 31.0  # no float overflow after days of failures


def test_shas_are_distinct_and_well_formed() -> None:
    items = shas(300, "b")
    assert len(set(items)) == 300
    assert all(len(s) == 64 and int(s, 16) >= 0 for s in items)


def test_build_publisher() -> None:
    disabled = build_publisher(None, reactor, RecordingMetrics())
    assert isinstance(disabled, NoPublisher)
    assert disabled.publish("ab" * 32) is None

    enabled = build_publisher(split_amqp_uri("amqp://h/?exchange=x"), reactor, RecordingMetrics())
    assert isinstance(enabled, AmqpPublisher)
    assert not enabled.running and not enabled.connected  # nothing happens before startService


# -- against the broker ---------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def relay():
    r = await Relay(reactor).start()
    yield r
    await r.stop()


@pytest_twisted.async_yield_fixture
async def consumer():
    c = await Consumer(reactor, f"stor-test-{uuid.uuid4().hex}", "sha").start()
    yield c
    await c.close()


@pytest.fixture
def logged():
    """Every event stor's log shows during the test (its observers are :func:`quiet`)."""
    events: list[dict[str, Any]] = []
    observer = quiet(events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def amqp_lines(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """What stor.amqp.publish logged: (level, text)."""
    return [(e["log_level"].name, formatEvent(e)) for e in events
            if e.get("log_namespace", "").startswith("stor.amqp.publish")]


@pytest_twisted.async_yield_fixture
async def start_publisher(relay: Relay):
    """Start publishers through ``relay``; all are stopped, and their (durable) exchanges deleted, after."""
    started: list[AmqpPublisher] = []
    exchanges: set[str] = set()

    def start(exchange: str, metrics: RecordingMetrics | None = None, query: str = "",
              uri: str | None = None, **kwargs: Any) -> AmqpPublisher:
        query = f"?exchange={exchange}{query}"
        params, exchange, routing_key = parse_amqp_uri(f"{uri or relay.uri}{query}")
        kwargs.setdefault("backoff", Retries())
        publisher = AmqpPublisher(params, exchange, routing_key, reactor,
                                  metrics or RecordingMetrics(), **kwargs)
        publisher.startService()
        started.append(publisher)
        exchanges.add(exchange)
        return publisher

    yield start
    for publisher in started:
        if publisher.running:
            await publisher.stopService()
    for exchange in exchanges:
        await delete_exchange(reactor, exchange)


def timed(publisher: AmqpPublisher, items: list[str]) -> float:
    start = time.perf_counter()
    for sha in items:
        publisher.publish(sha)
    return time.perf_counter() - start


def encoded(items: list[str]) -> list[bytes]:
    return [s.encode() for s in items]


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_publish_reaches_a_bound_queue(start_publisher: Callable[..., AmqpPublisher],
                                             consumer: Consumer) -> None:
    metrics = RecordingMetrics()
    publisher = start_publisher(consumer.exchange, metrics)
    early, late = shas(1, "e"), shas(1, "f")
    publisher.publish(early[0])  # before the connection is up: buffered, then sent
    await eventually(lambda: publisher.connected, reactor, what="connection")
    publisher.publish(late[0])
    assert await consumer.wait_for(2) == encoded(early + late)
    await eventually(lambda: publisher.in_flight == 0, reactor, what="confirms")
    assert publisher.buffered == 0
    assert metrics.counts[CONNECTED] == 1 and metrics.counts[DROPPED] == 0


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_cut_buffers_without_delay_and_restore_delivers_in_order(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer, relay: Relay,
) -> None:
    metrics, retries = RecordingMetrics(), Retries()
    publisher = start_publisher(consumer.exchange, metrics, backoff=retries)
    await eventually(lambda: publisher.connected, reactor, what="connection")
    n = 500
    before, during = shas(n, "b"), shas(n, "d")

    connected_time = timed(publisher, before)
    await consumer.wait_for(n)
    await eventually(lambda: publisher.in_flight == 0, reactor, what="confirms before the cut")

    await relay.cut()
    await eventually(lambda: not publisher.connected, reactor, what="the publisher to notice the cut")
    cut_time = timed(publisher, during)
    assert publisher.buffered == n
    # Buffering is cheaper than writing frames: a generous factor, no absolute threshold.
    assert cut_time < 5 * connected_time, (cut_time, connected_time)
    await eventually(lambda: len(retries.calls) >= 3, reactor, what="reconnect attempts while cut")

    await relay.restore()
    await eventually(lambda: publisher.connected, reactor, what="reconnection")
    assert await consumer.wait_for(2 * n) == encoded(before + during)
    await eventually(lambda: publisher.in_flight == 0, reactor, what="confirms after restore")
    assert publisher.buffered == 0 and publisher.dropped == 0
    assert metrics.counts[CONNECTED] == 2 and metrics.counts[DISCONNECTED] == 1


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_messages_in_flight_when_the_connection_drops_are_sent_again(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer, relay: Relay,
) -> None:
    metrics = RecordingMetrics()
    publisher = start_publisher(consumer.exchange, metrics)
    await eventually(lambda: publisher.connected, reactor, what="connection")
    items = shas(200)
    for sha in items:
        publisher.publish(sha)
    assert publisher.in_flight == len(items)
    await relay.drop()  # the relay keeps listening: the publisher reconnects at once
    await eventually(lambda: metrics.counts[CONNECTED] == 2 and publisher.connected, reactor,
                     what="reconnection")
    await eventually(lambda: publisher.in_flight == publisher.buffered == 0, reactor,
                     what="all confirmed")
    received = await consumer.wait_for(len(items))
    # At least once, in order: a message may repeat if only its confirm was lost.
    assert list(dict.fromkeys(received)) == encoded(items)


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_full_buffer_drops_the_oldest_and_counts_them(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer, relay: Relay,
) -> None:
    await relay.cut()
    metrics = RecordingMetrics()
    publisher = start_publisher(consumer.exchange, metrics, buffer_size=5)
    items = shas(8)
    for sha in items:
        publisher.publish(sha)
    assert (publisher.buffered, publisher.dropped, metrics.counts[DROPPED]) == (5, 3, 3)

    await relay.restore()
    assert await consumer.wait_for(5) == encoded(items[3:])
    await eventually(lambda: publisher.in_flight == 0, reactor, what="confirms")
    assert (publisher.buffered, publisher.dropped) == (0, 3)


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_a_closed_channel_reconnects_and_declares_again(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer,
) -> None:
    metrics = RecordingMetrics()
    publisher = start_publisher(consumer.exchange, metrics)
    await eventually(lambda: publisher.connected, reactor, what="connection")
    await consumer.delete_exchange()  # the broker closes the publisher's channel (404) on its next publish
    publisher.publish(shas(1)[0])
    await eventually(lambda: metrics.counts[CONNECTED] == 2 and publisher.connected, reactor,
                     what="reconnection after the channel closed")
    assert metrics.counts[DISCONNECTED] == 1
    # The message the broker refused was kept, re-sent after the exchange was declared again.
    await eventually(lambda: publisher.in_flight == publisher.buffered == 0, reactor,
                     what="the resent message confirmed")
    assert await consumer.exchange_exists()


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_stop_while_connected_closes_cleanly(
    start_publisher: Callable[..., AmqpPublisher], relay: Relay,
) -> None:
    before = active_delayed_calls()
    publisher = start_publisher(f"stor-test-{uuid.uuid4().hex}")
    await eventually(lambda: publisher.connected, reactor, what="connection")
    await publisher.stopService()
    assert not publisher.connected
    await eventually(lambda: not relay.connections, reactor, what="the relay to see the close")
    # A clean AMQP close: the last word of each side is Connection.Close and its Close-Ok.
    [connection] = relay.finished
    assert amqp_methods(connection.from_client)[-1] == (10, 50)
    assert amqp_methods(connection.from_broker)[-1] == (10, 51)
    assert not await lingering_calls(before)  # no heartbeat, watchdog or retry left behind
    publisher.publish("ab" * 32)  # still never raises: buffered for a later start
    assert publisher.buffered == 1


@pytest_twisted.ensureDeferred
async def test_stop_ends_reconnect_attempts(
    start_publisher: Callable[..., AmqpPublisher], relay: Relay,
) -> None:
    before = active_delayed_calls()
    relay.mode = "refuse"
    publisher = start_publisher(f"stor-test-{uuid.uuid4().hex}")
    await eventually(lambda: relay.accepted >= 3, reactor, what="repeated connection attempts")
    await publisher.stopService()
    assert not await lingering_calls(before)
    accepted = relay.accepted
    # Nothing is left to fire; watch a few maximum backoff periods to show it.
    await task.deferLater(reactor, 3 * Retries.MAXIMUM, lambda: None)
    assert relay.accepted == accepted


@pytest_twisted.ensureDeferred
async def test_hung_broker_times_out_the_handshake_and_stop_aborts_it(
    start_publisher: Callable[..., AmqpPublisher], relay: Relay, logged: list[dict[str, Any]],
) -> None:
    before = active_delayed_calls()
    relay.mode = "hold"
    publisher = start_publisher(f"stor-test-{uuid.uuid4().hex}", query="&stack_timeout=0.2")
    publisher.publish("ab" * 32)
    await eventually(lambda: relay.accepted >= 2, reactor, what="a second attempt after the timeout")
    first, second = relay.accept_times[:2]
    assert second - first >= 0.2  # the first attempt was given the whole timeout
    assert not publisher.connected and publisher.buffered == 1
    lines = amqp_lines(logged)
    assert len(lines) == 1, lines
    [(level, line)] = lines
    assert level == "warn" and "cannot connect to" in line and "HandshakeTimeout" in line, line
    await eventually(lambda: len(relay.connections) == 1, reactor, what="an attempt in its handshake")
    await publisher.stopService()
    await eventually(lambda: not relay.connections, reactor, what="the held connection closed")
    assert not await lingering_calls(before)


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_an_outage_logs_one_warning_and_one_line_when_back(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer, relay: Relay,
    logged: list[dict[str, Any]],
) -> None:
    retries = Retries()
    publisher = start_publisher(consumer.exchange, backoff=retries)
    await eventually(lambda: publisher.connected, reactor, what="connection")
    logged.clear()
    await relay.cut()
    await eventually(lambda: len(retries.calls) >= 5, reactor, what="refused reconnect attempts")
    assert retries.calls[:5] == [0, 1, 2, 3, 4]  # each failure lengthens the wait
    await relay.restore()
    await eventually(lambda: publisher.connected, reactor, what="reconnection")

    lines = amqp_lines(logged)
    assert len(lines) == 2, lines
    [(warn_level, warning), (info_level, back)] = lines
    assert warn_level == "warn" and "lost the connection to 127.0.0.1" in warning, warning
    assert info_level == "info" and "connected to 127.0.0.1" in back and "again after" in back, back
    # No line per attempt, from the publisher or from Twisted's ClientService.
    assert not [e for e in logged if "Scheduling retry" in (e.get("log_format") or "")]


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_a_broker_unreachable_at_start_logs_one_warning(
    start_publisher: Callable[..., AmqpPublisher], consumer: Consumer, relay: Relay,
    logged: list[dict[str, Any]],
) -> None:
    await relay.cut()
    retries = Retries()
    publisher = start_publisher(consumer.exchange, backoff=retries)
    publisher.publish(shas(1)[0])
    await eventually(lambda: len(retries.calls) >= 3, reactor, what="refused attempts")
    await relay.restore()
    await consumer.wait_for(1)
    lines = amqp_lines(logged)
    assert len(lines) == 2, lines
    [(warn_level, warning), (info_level, back)] = lines
    assert warn_level == "warn" and "cannot connect to 127.0.0.1" in warning, warning
    assert "ConnectionRefused" in warning, warning
    assert info_level == "info" and "again after" in back and "1 to send" in back, back


@pytest.mark.acceptance('rabbitmq')
@pytest_twisted.ensureDeferred
async def test_a_refused_login_is_logged_with_the_brokers_reason_and_backs_off(
    start_publisher: Callable[..., AmqpPublisher], relay: Relay, logged: list[dict[str, Any]],
) -> None:
    """The broker accepts TCP, then closes with 403: that reason (which pika's Twisted adapter
    only keeps privately) is what the log says, and each refusal lengthens the wait."""
    retries = Retries()
    publisher = start_publisher(f"stor-test-{uuid.uuid4().hex}", backoff=retries,
                                uri=relay.uri_for("guest", "not-the-password"))
    await eventually(lambda: len(retries.calls) >= 3, reactor, what="refused logins")
    assert retries.calls[:3] == [0, 1, 2]
    assert relay.accepted >= 3 and not publisher.connected
    lines = amqp_lines(logged)
    assert len(lines) == 1, lines
    [(level, line)] = lines
    assert level == "warn" and "cannot connect to" in line, line
    assert "ConnectionClosedByBroker" in line and "403" in line and "ACCESS_REFUSED" in line, line
    assert "not-the-password" not in line
