"""The quiet reconnecting client (stor.core.reconnect): Twisted's line per attempt reaches
no stor log, each failed attempt reaches its owner, an outage is told once."""

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint

from support.harness import wait_for
from stor.core.reconnect import Outage, quiet, reconnecting
from stor.observe import logs
from stor.observe.stream import StreamSender


@implementer(IStreamClientEndpoint)
class Refusing:
    """An endpoint whose every attempt is refused at once."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: IProtocolFactory) -> "Deferred[Any]":
        self.attempts += 1
        return fail(ConnectionRefusedError("refused"))


class Logged:
    """Every event logged (``raw``) and those a stor observer lets through (``shown``)."""

    def __init__(self) -> None:
        self.raw: list[LogEvent] = []
        self.shown: list[LogEvent] = []
        self.quiet = quiet(self.shown.append)

    def texts(self, events: list[LogEvent]) -> list[str]:
        return [formatEvent(e) for e in events]


@pytest.fixture
def logged() -> Iterator[Logged]:
    seen = Logged()
    globalLogPublisher.addObserver(seen.raw.append)
    globalLogPublisher.addObserver(seen.quiet)
    yield seen
    globalLogPublisher.removeObserver(seen.quiet)
    globalLogPublisher.removeObserver(seen.raw.append)


def test_failed_attempts_reach_the_owner_and_not_the_log(logged: Logged) -> None:
    clock, endpoint, failures = Clock(), Refusing(), []
    service = reconnecting(endpoint, Factory.forProtocol(Protocol), retry=lambda n: 1.0,
                           clock=clock, failed=failures.append)
    service.startService()
    clock.pump([1.0] * 5)
    service.stopService()

    assert endpoint.attempts == 6 and len(failures) == 6
    assert all(isinstance(f, Failure) and f.check(ConnectionRefusedError) for f in failures)
    retries = [t for t in logged.texts(logged.raw) if t.startswith("Scheduling retry")]
    assert len(retries) == 6  # Twisted still says it, once per attempt ...
    assert not [t for t in logged.texts(logged.shown) if "Scheduling retry" in t]  # ... to nobody


def test_warnings_and_other_sources_still_get_through(logged: Logged) -> None:
    clock = Clock()
    service = reconnecting(Refusing(), Factory.forProtocol(Protocol), retry=lambda n: 1.0,
                           clock=clock)
    Logger(source=service).warn("a warning from the service")
    Logger(source=object()).info("someone else's info line")
    Logger().info("a line without a source")
    assert logged.texts(logged.shown) == [
        "a warning from the service", "someone else's info line", "a line without a source"]


@pytest_twisted.ensureDeferred
async def test_a_real_connection_and_its_loss_leave_no_factory_or_retry_lines(
        logged: Logged) -> None:
    listening = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    retried: Deferred[LogEvent] = Deferred()
    seen: list[LogEvent] = []

    def watch(event: LogEvent) -> None:
        if not seen and (event.get("log_format") or "").startswith("Scheduling retry"):
            seen.append(event)
            reactor.callLater(0, retried.callback, event)  # out of the service's transition

    globalLogPublisher.addObserver(watch)
    factory = Factory.forProtocol(Protocol)
    service = reconnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", listening.getHost().port),
                           factory, retry=lambda n: 60.0, clock=reactor)
    try:
        service.startService()
        protocol = await service.whenConnected()
        protocol.transport.loseConnection()
        await retried.addTimeout(10, reactor)  # lost: Twisted schedules a retry, and says so
    finally:
        globalLogPublisher.removeObserver(watch)
        await service.stopService()
        await listening.stopListening()

    mine = [e for e in logged.raw if e.get("log_source") in (service, factory)]
    assert {formatEvent(e).split(" ")[0] for e in mine} >= {"Starting", "Stopping", "Scheduling"}
    assert not [e for e in logged.shown if e.get("log_source") in (service, factory)]


def test_stor_log_file_observer_drops_the_noise(capsys: pytest.CaptureFixture[str]) -> None:
    logs.use_format("text", "-", True)  # twistd -n: stdout
    observer = logs.observer_factory()
    service = reconnecting(Refusing(), Factory.forProtocol(Protocol), retry=lambda n: 1.0,
                           clock=Clock())
    for event in ({"log_format": "Scheduling retry 1 to connect x in 1 seconds.",
                   "log_level": LogLevel.info, "log_source": service,
                   "log_namespace": "twisted.application.internet.ClientService", "log_time": 0},
                  {"log_format": "memcached m is down", "log_level": LogLevel.warn,
                   "log_namespace": "stor.cache.lookup", "log_time": 0}):
        observer(event)
    out = capsys.readouterr().out
    assert "memcached m is down" in out and "Scheduling retry" not in out


def test_an_outage_begins_once_and_says_how_long_it_lasted() -> None:
    clock = Clock()
    outage = Outage(clock)
    assert outage.end() is None and not outage.down  # nothing to report
    assert outage.begin() is True and outage.down
    clock.advance(3)
    assert outage.begin() is False  # still the same outage: no second warning
    clock.advance(4.5)
    assert outage.end() == 7.5 and not outage.down
    assert outage.begin() is True  # a new one
    outage.forget()
    assert outage.end() is None


def next_event(match: Callable[[LogEvent], bool], count: int = 1) -> "Deferred[None]":
    """Fires (on a later turn of the reactor) once ``count`` events ``match`` were logged."""
    d: Deferred[None] = Deferred()
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if len(seen) < count and match(event):
            seen.append(event)
            if len(seen) == count:
                globalLogPublisher.removeObserver(observe)
                reactor.callLater(0, d.callback, None)

    globalLogPublisher.addObserver(observe)
    return d.addTimeout(20, reactor)


@pytest_twisted.ensureDeferred
async def test_a_stream_peer_down_for_many_attempts_is_one_warning_then_one_line_when_back(
        logged: Logged) -> None:
    held = socket.socket()  # bound, not listening: every attempt is refused, the port is ours
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    sender = StreamSender("127.0.0.1", port, reactor, "statsite", retry=lambda n: 0.01)
    attempts = next_event(lambda e: "Scheduling retry" in (e.get("log_format") or ""), 5)
    sender.startService()
    listening = None
    try:
        await attempts
        held.listen()
        held.setblocking(False)  # the reactor's accept must not wait
        listening = reactor.adoptStreamPort(held.fileno(), socket.AF_INET,
                                            Factory.forProtocol(Protocol))
        connected = next_event(lambda e: "connected to" in (e.get("log_format") or ""))
        await connected
    finally:
        held.close()
        await sender.stopService()
        if listening is not None:
            await listening.stopListening()
    lines = [(e["log_level"], formatEvent(e)) for e in logged.shown
             if e.get("log_namespace") == "stor.observe.stream"]
    assert len(lines) == 2, lines
    (warn, warning), (info, back) = lines
    assert warn == LogLevel.warn and f"cannot connect to 127.0.0.1:{port}" in warning
    assert info == LogLevel.info and f"connected to 127.0.0.1:{port} again after" in back


class Hangup:
    """A TCP peer that accepts and closes at once (a memcached that never answers), counting."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.mark.acceptance('stor-process')
def test_a_stor_process_logs_a_memcached_outage_once_whatever_the_attempts(stor_process) -> None:
    """Acceptance: what ``twistd -n stor`` writes while memcached hangs up on every attempt."""
    peer = Hangup()
    try:
        stor = stor_process(memcached_servers=[f"127.0.0.1:{peer.port}"])
        wait_for(lambda: peer.accepted >= 3, "three attempts (1 s, then 2 s apart)", stor,
                 timeout=30)
        assert stor.terminate() == 0
    finally:
        peer.close()
    out = stor.out
    assert out.count(f"memcached 127.0.0.1:{peer.port} is down") == 1, out
    assert "Scheduling retry" not in out and "Starting factory" not in out, out
