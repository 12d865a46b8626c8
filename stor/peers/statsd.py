"""statsite (statsd) metrics with the old service's key names and lines (docs/SPEC.md §6).

:class:`Metrics` is what the rest of stor calls; :class:`NullMetrics` is used
when no ``statsite`` is configured so callers never test a flag.

Lines are written as the old service's client, Net::Statsite::Client, wrote
them: ``<prefix>.<key>:<value>|c`` or ``|ms``, the prefix joined with a dot
when there is one, ``:``, ``|`` and ``/`` in the name replaced by ``_``, each
line ending in a newline.  With a ``sample_rate`` below 1 every line (counters
and timers alike) is sent with that probability and carries ``|@<rate>``.
Over UDP each line is one datagram (:class:`~stor.peers.udp.UdpSender`); over
TCP the lines follow each other on a connection that comes back after a
failure (:class:`~stor.peers.stream.StreamSender`).  A missing or unreachable
statsite never affects a request.
"""

import random
import re
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service

from stor.config import Config, StatsiteConfig
from stor.config.perl import perl_string
from stor.core.metrics import Metrics, NullMetrics
from stor.peers.stream import StreamSender
from stor.peers.udp import UdpSender

_UNSAFE = re.compile(r"[:|/]")
"""statsite's separators, replaced in names as the old client did."""


class StatsdMetrics:
    """Turns counts and timings into statsd lines and hands each to ``send``."""

    def __init__(self, config: StatsiteConfig, send: Callable[[bytes], None],
                 rng: random.Random | None = None) -> None:
        self._prefix = config.prefix + "." if config.prefix else ""
        self._rate = config.sample_rate
        self._suffix = f"|@{perl_string(config.sample_rate)}" if config.sample_rate < 1 else ""
        self._send = send
        self._rng = rng or random.Random()

    def incr(self, key: str, value: int = 1) -> None:
        self._line(key, f"{value}|c")

    def timing(self, key: str, ms: float) -> None:
        self._line(key, f"{ms:.3f}|ms")

    def gauge(self, key: str, value: float) -> None:
        """A level (``|g``), never sampled: statsite keeps the last value sent."""
        text = str(int(value)) if float(value).is_integer() else f"{value:.3f}"
        name = _UNSAFE.sub("_", self._prefix + key)
        self._send(f"{name}:{text}|g\n".encode())

    def _line(self, key: str, value: str) -> None:
        if self._suffix and not self._rng.random() <= self._rate:
            return  # sampled out, as the old client's rand() <= rate
        name = _UNSAFE.sub("_", self._prefix + key)
        self._send(f"{name}:{value}{self._suffix}\n".encode())


def build_metrics(config: Config, reactor: Any) -> tuple[Metrics, Service | None]:
    """The metrics for ``config`` and the service that sends them (None: nothing to start)."""
    statsite = config.statsite
    if statsite is None:
        return NullMetrics(), None
    sender: UdpSender | StreamSender
    if statsite.proto == "tcp":
        sender = StreamSender(statsite.host, statsite.port, reactor, "statsite")
    else:
        sender = UdpSender(statsite.host, statsite.port, reactor, "statsite")
    return StatsdMetrics(statsite, sender.send), sender
