"""The one UDP sender behind statsite and GELF: real datagrams on a socket the test reads."""

import threading
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher

from stor.observe.udp import UdpSender


def started(host: str, port: int, **kwargs: Any) -> UdpSender:
    sender = UdpSender(host, port, reactor, "test peer", **kwargs)
    sender.startService()
    return sender


@pytest_twisted.ensureDeferred
async def test_datagrams_reach_an_ip_address_at_once(datagrams) -> None:
    sender = started("127.0.0.1", datagrams.port)
    try:
        sender.send(b"one")
        sender.send_all([b"two", b"three"])
        for expected in (b"one", b"two", b"three"):
            await datagrams.wait(lambda d, e=expected: d == e)
        assert (sender.sent, sender.dropped) == (3, 0)
    finally:
        sender.stopService()


@pytest_twisted.ensureDeferred
async def test_a_name_is_resolved_off_the_reactor_and_what_waited_for_it_is_sent(datagrams) -> None:
    sender = UdpSender("localhost", datagrams.port, reactor, "test peer")
    sender.send(b"sent before start")  # start-up messages wait for the address
    sender.startService()
    try:
        await datagrams.wait(lambda d: d == b"sent before start")
        sender.send(b"after")
        await datagrams.wait(lambda d: d == b"after")
    finally:
        sender.stopService()


@pytest_twisted.ensureDeferred
async def test_any_thread_may_send(datagrams) -> None:
    sender = started("127.0.0.1", datagrams.port)
    try:
        await deferToThread(sender.send, b"from a thread")
        await datagrams.wait(lambda d: d == b"from a thread")
    finally:
        sender.stopService()


@pytest_twisted.ensureDeferred
async def test_a_datagram_the_kernel_refuses_is_counted_not_raised(datagrams) -> None:
    sender = started("127.0.0.1", datagrams.port)
    try:
        sender.send(b"x" * 70_000)  # larger than any UDP datagram
        sender.send(b"fits")
        await datagrams.wait(lambda d: d == b"fits")
        assert (sender.sent, sender.dropped) == (1, 1)
    finally:
        sender.stopService()


@pytest_twisted.ensureDeferred
async def test_an_unresolvable_name_warns_once_and_counts_what_it_drops() -> None:
    warned: Deferred[LogEvent] = Deferred()

    def observe(event: LogEvent) -> None:
        if event.get("what") == "test peer" and "does not resolve" in event.get("log_format", ""):
            if not warned.called:
                warned.callback(event)

    globalLogPublisher.addObserver(observe)
    sender = started("no-such-host.invalid", 9, pending_limit=2)
    try:
        for n in range(3):
            sender.send(b"%d" % n)  # two wait for the address, the third does not fit
        assert sender.dropped == 1
        event = await warned.addTimeout(30, reactor)
        assert event["host"] == "no-such-host.invalid"
    finally:
        sender.stopService()
        globalLogPublisher.removeObserver(observe)
    assert sender.dropped == 3  # what still waited is counted at stop
    sender.send(b"after stop")
    assert (sender.sent, sender.dropped) == (0, 4)


def test_sending_never_blocks_the_caller_even_without_a_reactor_turn() -> None:
    # 10 000 datagrams to a port nobody reads, from two threads: all return at once
    sender = UdpSender("127.0.0.1", 9, reactor, "test peer")
    sender.startService()
    try:
        def burst() -> None:
            for _ in range(5000):
                sender.send(b"x" * 1000)

        threads = [threading.Thread(target=burst) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
        assert sender.sent + sender.dropped == 10_000
    finally:
        sender.stopService()
