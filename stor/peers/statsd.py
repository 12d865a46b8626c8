"""statsite (statsd) metrics over UDP, with the old service's key names (SPEC §6).

:class:`Metrics` is what the rest of stor calls; :class:`NullMetrics` is used
when no ``statsite`` is configured so callers never test a flag.  Sending is a
single non-blocking UDP datagram; a missing or unreachable statsite is silent.
"""

import random
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from stor.config import Config, StatsiteConfig

log = Logger()


class Metrics(Protocol):
    """Counters and timings, keyed as in SPEC §6."""

    def incr(self, key: str, value: int = 1) -> None: ...

    def timing(self, key: str, ms: float) -> None: ...

    def gauge(self, key: str, value: float) -> None: ...


class NullMetrics:
    """Metrics that go nowhere."""

    def incr(self, key: str, value: int = 1) -> None:
        pass

    def timing(self, key: str, ms: float) -> None:
        pass

    def gauge(self, key: str, value: float) -> None:
        pass


class StatsdMetrics(DatagramProtocol):
    """Send ``<prefix>.<key>:<value>|c|@rate`` and ``|ms`` lines to statsite."""

    def __init__(self, config: StatsiteConfig, rng: random.Random | None = None) -> None:
        self._prefix = config.prefix.rstrip(".") + "." if config.prefix else ""
        self._rate = config.sample_rate
        self.host = config.host
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

    def gauge(self, key: str, value: float) -> None:
        """A level (``|g``), never sampled: statsite keeps the last value sent."""
        text = str(int(value)) if float(value).is_integer() else f"{value:.3f}"
        self._send(f"{self._prefix}{key}:{text}|g")

    def _send(self, line: str) -> None:
        if self.transport is None or self._address is None:
            return
        try:
            self.transport.write(line.encode(), self._address)
        except OSError as e:  # statsite down: metrics are best effort
            log.debug("statsite send failed: {error}", error=e)


class StatsdService(Service):
    """Owns the UDP socket of a :class:`StatsdMetrics` and keeps its host resolved.

    The name is resolved with ``reactor.resolve`` (a thread, not the reactor)
    at start and every ``refresh`` seconds, so a statsite that moves is
    followed and a DNS outage only delays metrics.
    """

    def __init__(self, metrics: StatsdMetrics, reactor: Any, refresh: float = 300.0) -> None:
        self.metrics = metrics
        self._reactor = reactor
        self._refresh = refresh
        self._port: Any = None
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._port = self._reactor.listenUDP(0, self.metrics)
        self._loop = LoopingCall(self._resolve)
        self._loop.clock = self._reactor
        self._loop.start(self._refresh, now=True)

    def stopService(self) -> Any:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._port is not None:
            return self._port.stopListening()
        return None

    def _resolve(self) -> Any:
        d = self._reactor.resolve(self.metrics.host)
        d.addCallbacks(self.metrics.resolved, self._unresolved)
        return d

    def _unresolved(self, failure: Any) -> None:
        log.warn("statsite host {host} does not resolve: {error}",
                 host=self.metrics.host, error=failure.getErrorMessage())


def build_metrics(config: Config, reactor: Any) -> tuple[Metrics, Service | None]:
    """The metrics for ``config`` and the service to start them (None: nothing to start)."""
    if config.statsite is None:
        return NullMetrics(), None
    metrics = StatsdMetrics(config.statsite)
    return metrics, StatsdService(metrics, reactor)
