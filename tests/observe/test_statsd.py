"""statsd lines as Net::Statsite::Client wrote them, over UDP and over TCP to real sockets."""

import random
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import LogEvent, globalLogPublisher

from support.logs import Stream
from support.ports import free_port
from stor.config import StatsiteConfig, parse_config
from stor.observe.statsd import FLUSH_DELAY, FlushedOnStop, StatsdMetrics, build_metrics
from stor.observe.stream import StreamSender


def lines(config: StatsiteConfig, rng: random.Random | None = None) -> tuple[StatsdMetrics, list[bytes]]:
    sent: list[bytes] = []
    return StatsdMetrics(config, sent.append, rng), sent


def test_lines_are_the_old_clients() -> None:
    metrics, sent = lines(StatsiteConfig(prefix="stor.dev"))
    metrics.incr("request.get.count")
    metrics.incr("success.get.ok_old.mnt-data1.size", 5000)
    metrics.timing("lookup.time", 1.5)
    assert sent == [b"stor.dev.request.get.count:1|c\n",
                    b"stor.dev.success.get.ok_old.mnt-data1.size:5000|c\n",
                    b"stor.dev.lookup.time:1.500|ms\n"]


def test_no_prefix_and_statsite_separators_in_names() -> None:
    metrics, sent = lines(StatsiteConfig())
    metrics.incr("a:b|c/d")
    assert sent == [b"a_b_c_d:1|c\n"]
    metrics, sent = lines(StatsiteConfig(prefix="x/y"))
    metrics.incr("k")
    assert sent == [b"x_y.k:1|c\n"]  # the prefix is cleaned too, as the old client did


def test_a_sample_rate_applies_to_every_line_and_is_carried_on_it() -> None:
    metrics, sent = lines(StatsiteConfig(prefix="p", sample_rate=0.25), random.Random(7))
    for _ in range(4000):
        metrics.incr("request.get.count")
        metrics.timing("lookup.time", 2)
    counters = [s for s in sent if b"|c" in s]
    timers = [s for s in sent if b"|ms" in s]
    assert set(counters) == {b"p.request.get.count:1|c|@0.25\n"}
    assert set(timers) == {b"p.lookup.time:2.000|ms|@0.25\n"}
    assert 850 < len(counters) < 1150 and 850 < len(timers) < 1150


@pytest.mark.parametrize("rate, count", [(1.0, 100), (2.0, 100), (0.0, 0)])
def test_a_rate_of_one_or_more_sends_all_without_a_rate_and_zero_sends_none(rate: float,
                                                                            count: int) -> None:
    metrics, sent = lines(StatsiteConfig(sample_rate=rate))
    for _ in range(100):
        metrics.incr("k")
    assert sent == [b"k:1|c\n"] * count


def started_udp(port: int) -> tuple[Any, Any]:
    """The daemon's metrics to statsite on ``port`` (prefix ``stor``), their service started."""
    config = parse_config({"storage_pairs": [["/x/a", "/x/b"]],
                           "statsite": {"host": "127.0.0.1", "port": port,
                                        "prefix": "stor", "sample_rate": 1}})
    metrics, service = build_metrics(config, reactor)
    assert service is not None
    service.startService()
    return metrics, service


@pytest_twisted.ensureDeferred
async def test_udp_goes_to_the_configured_port(datagrams) -> None:
    metrics, service = started_udp(datagrams.port)
    try:
        metrics.incr("healthcheck.count")
        await datagrams.wait(lambda d: d == b"stor.healthcheck.count:1|c\n")
    finally:
        await maybeDeferred(service.stopService)


def test_the_daemons_lines_of_a_moment_go_out_together_after_the_flush_delay() -> None:
    clock = task.Clock()
    sent: list[bytes] = []
    metrics = StatsdMetrics(StatsiteConfig(prefix="stor"), sent.append,
                            schedule=lambda f: clock.callLater(FLUSH_DELAY, f))
    metrics.incr("request.post.count")
    clock.advance(FLUSH_DELAY / 2)
    metrics.timing("lookup.time", 1.5)  # another request's, a few turns later
    assert sent == []
    clock.advance(FLUSH_DELAY / 2)
    assert sent == [b"stor.request.post.count:1|c\nstor.lookup.time:1.500|ms\n"]
    metrics.incr("request.get.count")
    clock.advance(FLUSH_DELAY)
    assert sent[1:] == [b"stor.request.get.count:1|c\n"]


@pytest_twisted.ensureDeferred
async def test_lines_waiting_at_a_stop_are_sent_before_the_sender_closes(datagrams) -> None:
    metrics, service = started_udp(datagrams.port)
    metrics.incr("last.count")  # would go out FLUSH_DELAY later: the stop sends it now
    await maybeDeferred(service.stopService)
    await datagrams.wait(lambda d: d == b"stor.last.count:1|c\n")


def logged(match: Callable[[LogEvent], bool], timeout: float = 10.0) -> "Deferred[LogEvent]":
    """The next log event ``match`` accepts."""
    d: Deferred[LogEvent] = Deferred()

    def observe(event: LogEvent) -> None:
        if not d.called and match(event):
            globalLogPublisher.removeObserver(observe)
            d.callback(event)

    globalLogPublisher.addObserver(observe)
    return d.addTimeout(timeout, reactor)


async def _listen(stream: Stream, port: int = 0) -> Any:
    return reactor.listenTCP(port, stream, interface="127.0.0.1")


@pytest_twisted.ensureDeferred
async def test_tcp_lines_wait_for_the_connection_and_follow_it_when_it_comes_back() -> None:
    port = free_port()
    sender = StreamSender("127.0.0.1", port, reactor, "statsite", retry=lambda n: 0.05)
    config = StatsiteConfig(prefix="stor", proto="tcp", port=port)
    metrics = StatsdMetrics(config, sender.send)
    sender.startService()
    stream = Stream(b"\n")
    listening = None
    try:
        metrics.incr("before.listening")  # nobody listens yet: kept
        listening = await _listen(stream, port)
        await stream.wait(lambda line: line == b"stor.before.listening:1|c")
        metrics.timing("lookup.time", 3)
        await stream.wait(lambda line: line == b"stor.lookup.time:3.000|ms")

        # statsite restarts: the connection drops, lines wait, a new connection takes them
        await listening.stopListening()
        listening = None
        lost = logged(lambda e: "lost" in e.get("log_format", "") and e.get("port") == port)
        assert stream.current is not None and stream.current.transport is not None
        stream.current.transport.loseConnection()
        await lost  # what is written before stor sees the end is lost with the connection
        metrics.incr("while.away")
        listening = await _listen(stream, port)
        await stream.wait(lambda line: line == b"stor.while.away:1|c")
        assert stream.connections == 2
        assert sender.dropped == 0
    finally:
        await sender.stopService()
        if listening is not None:
            await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_tcp_buffer_is_bounded_and_drops_the_oldest() -> None:
    port = free_port()
    sender = StreamSender("127.0.0.1", port, reactor, "statsite", limit=3, retry=lambda n: 0.05)
    sender.startService()
    stream = Stream(b"\n")
    listening = None
    try:
        for n in range(5):
            sender.send(b"m%d\n" % n)
        assert sender.dropped == 2
        listening = await _listen(stream, port)
        await stream.wait(lambda line: line == b"m4")
        assert stream.items == [b"m2", b"m3", b"m4"]
    finally:
        await sender.stopService()
        if listening is not None:
            await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_tcp_config_builds_a_stream_sender() -> None:
    stream = Stream(b"\n")
    listening = await _listen(stream)
    config = parse_config({"storage_pairs": [["/x/a", "/x/b"]],
                           "statsite": {"host": "127.0.0.1", "port": listening.getHost().port,
                                        "proto": "tcp", "sample_rate": 0.5}})
    metrics, service = build_metrics(config, reactor)
    assert isinstance(service, FlushedOnStop) and isinstance(service.sender, StreamSender)
    service.startService()
    try:
        for _ in range(200):
            metrics.incr("request.get.count")
        await stream.wait(lambda line: line == b"request.get.count:1|c|@0.5")
    finally:
        await service.stopService()
        await listening.stopListening()
