"""statsite (statsd) metrics over UDP, with the old service's key names (SPEC §6).

:class:`Metrics` is what the rest of stor calls; :class:`NullMetrics` is used
when no ``statsite`` is configured so callers never test a flag.  Sending is a
single non-blocking UDP datagram; a missing or unreachable statsite is silent.
"""

import random
import socket
from typing import Protocol

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from stor.config import StatsiteConfig

log = Logger()


class Metrics(Protocol):
    """Counters and timings, keyed as in SPEC §6."""

    def incr(self, key: str, value: int = 1) -> None: ...

    def timing(self, key: str, ms: float) -> None: ...


class NullMetrics:
    """Metrics that go nowhere."""

    def incr(self, key: str, value: int = 1) -> None:
        pass

    def timing(self, key: str, ms: float) -> None:
        pass


class StatsdMetrics(DatagramProtocol):
    """Send ``<prefix>.<key>:<value>|c|@rate`` and ``|ms`` lines to statsite."""

    def __init__(self, config: StatsiteConfig, rng: random.Random | None = None) -> None:
        self._prefix = config.prefix.rstrip(".") + "." if config.prefix else ""
        self._rate = config.sample_rate
        self._host = config.host
        self._port = config.port
        self._address: tuple[str, int] | None = None
        self._rng = rng or random.Random()

    def resolved(self, ip: str) -> None:
        """The statsite host name resolved to ``ip`` (resolution is done off the reactor)."""
        self._address = (ip, self._port)

    def incr(self, key: str, value: int = 1) -> None:
        if self._rate < 1.0:
            if self._rng.random() >= self._rate:
                return
            self._send(f"{self._prefix}{key}:{value}|c|@{self._rate:g}")
        else:
            self._send(f"{self._prefix}{key}:{value}|c")

    def timing(self, key: str, ms: float) -> None:
        self._send(f"{self._prefix}{key}:{ms:.3f}|ms")

    def _send(self, line: str) -> None:
        if self.transport is None or self._address is None:
            return
        try:
            self.transport.write(line.encode(), self._address)
        except (OSError, socket.error) as e:  # statsite down: metrics are best effort
            log.debug("statsite send failed: {error}", error=e)
