"""statsite (statsd) metrics with the old service's key names and lines (docs/SPEC.md §6).

:class:`Metrics` is what the rest of stor calls; :class:`NullMetrics` is used
when no ``statsite`` is configured so callers never test a flag.

Lines are written as the old service's client, Net::Statsite::Client, wrote
them: ``<prefix>.<key>:<value>|c`` or ``|ms``, the prefix joined with a dot
when there is one, ``:``, ``|`` and ``/`` in the name replaced by ``_``, each
line ending in a newline.  With a ``sample_rate`` below 1 every line (counters
and timers alike) is sent with that probability and carries ``|@<rate>``.
Over UDP each line is one datagram (:class:`~stor.observe.udp.UdpSender`); over
TCP the lines follow each other on a connection that comes back after a
failure (:class:`~stor.observe.stream.StreamSender`).  A missing or unreachable
statsite never affects a request.
"""

import random
import re
from collections.abc import Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from stor.config import Config, StatsiteConfig
from stor.config.perl import perl_string
from stor.core.metrics import Metrics, NullMetrics
from stor.core.reactor import Reactor
from stor.observe.stream import StreamSender
from stor.observe.udp import UdpSender

_UNSAFE = re.compile(r"[:|/]")
"""statsite's separators, replaced in names as the old client did."""


DATAGRAM = 1432
"""Lines sent together stay under this many bytes: one Ethernet frame, no fragments."""


FLUSH_DELAY = 0.05
"""Seconds the daemon's lines wait for others before going out (statsite
aggregates over its own flush interval, 10 s by default: 50 ms is invisible there)."""


class StatsdMetrics:
    """Turns counts and timings into statsd lines and hands them to ``send``.

    With ``schedule`` (the daemon passes ``lambda f: reactor.callLater(FLUSH_DELAY,
    f)``) the lines of :data:`FLUSH_DELAY` go out together, newline-separated in
    as few datagrams as fit (statsite reads every line of a datagram): a GET
    counts six things, and six system calls a request would cost more than the
    GET itself.  A flush per turn of the event loop still cost two ``sendto``
    per small upload, 3 % of its time with one client (an A/B with statsite
    sends switched off); one flush per 50 ms costs one for many requests.
    Without ``schedule`` (a command-line tool) each line is sent at once.  Call
    it from one thread (the reactor's); :func:`build_metrics`'s service flushes
    what waits when the daemon stops.
    """

    def __init__(self, config: StatsiteConfig, send: Callable[[bytes], None],
                 rng: random.Random | None = None,
                 schedule: Callable[[Callable[[], None]], object] | None = None) -> None:
        self._prefix = config.prefix + "." if config.prefix else ""
        self._rate = config.sample_rate
        self._suffix = f"|@{perl_string(config.sample_rate)}" if config.sample_rate < 1 else ""
        self._send = send
        self._rng = rng or random.Random()
        self._schedule = schedule
        self._names: dict[str, str] = {}
        self._batch: list[str] = []
        self._flush_call: object = None

    def incr(self, key: str, value: int = 1) -> None:
        self._line(key, f"{value}|c")

    def timing(self, key: str, ms: float) -> None:
        self._line(key, f"{ms:.3f}|ms")

    def gauge(self, key: str, value: float) -> None:
        """A level (``|g``), never sampled: statsite keeps the last value sent."""
        text = str(int(value)) if float(value).is_integer() else f"{value:.3f}"
        self._out(f"{self._name(key)}:{text}|g\n")

    def flush(self) -> None:
        """Send the lines waiting (when scheduled, or at a stop)."""
        call, self._flush_call = self._flush_call, None
        if IDelayedCall.providedBy(call) and call.active():
            call.cancel()  # a stop flushing early: the scheduled flush is not needed
        batch, self._batch = self._batch, []
        datagram = ""
        for line in batch:
            if datagram and len(datagram) + len(line) > DATAGRAM:
                self._send(datagram.encode())
                datagram = ""
            datagram += line
        if datagram:
            self._send(datagram.encode())

    def _line(self, key: str, value: str) -> None:
        if self._suffix and not self._rng.random() <= self._rate:
            return  # sampled out, as the old client's rand() <= rate
        self._out(f"{self._name(key)}:{value}{self._suffix}\n")

    def _name(self, key: str) -> str:
        name = self._names.get(key)
        if name is None:
            name = self._names[key] = _UNSAFE.sub("_", self._prefix + key)
            if len(self._names) > 10_000:  # per-storage keys are few; never unbounded
                self._names.clear()
        return name

    def _out(self, line: str) -> None:
        if self._schedule is None:
            self._send(line.encode())
            return
        if not self._batch:
            self._flush_call = self._schedule(self.flush)
        self._batch.append(line)


def build_metrics(config: Config, reactor: Reactor) -> tuple[Metrics, Service | None]:
    """The metrics for ``config`` and the service that sends them (None: nothing to start)."""
    statsite = config.statsite
    if statsite is None:
        return NullMetrics(), None
    sender: UdpSender | StreamSender
    if statsite.proto == "tcp":
        sender = StreamSender(statsite.host, statsite.port, reactor, "statsite")
    else:
        sender = UdpSender(statsite.host, statsite.port, reactor, "statsite")
    metrics = StatsdMetrics(statsite, sender.send,
                            schedule=lambda f: reactor.callLater(FLUSH_DELAY, f))
    return metrics, FlushedOnStop(metrics, sender)


class FlushedOnStop(MultiService):
    """The sender's service, which sends the lines still waiting before it stops."""

    def __init__(self, metrics: StatsdMetrics, sender: Service) -> None:
        super().__init__()
        self._metrics = metrics
        self.sender = sender
        """The :class:`~stor.observe.udp.UdpSender` or
        :class:`~stor.observe.stream.StreamSender` the config asked for."""
        sender.setServiceParent(self)

    def stopService(self) -> "Deferred[None]":
        self._metrics.flush()
        return super().stopService()
