"""What the store and the HTTP layer count: the statsite interface (docs/SPEC.md §6).

The implementation (UDP or TCP lines to statsite) is a peer
(:mod:`stor.observe.statsd`); everything above it sees only this protocol, and
:class:`NullMetrics` when no ``statsite`` is configured, so callers never test
a flag.
"""

from typing import Protocol


class Metrics(Protocol):
    """Counters and timings, keyed as in docs/SPEC.md §6."""

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


class Tee:
    """Every event to each of ``targets`` (statsite and Prometheus)."""

    def __init__(self, *targets: Metrics) -> None:
        self._targets = targets

    def incr(self, key: str, value: int = 1) -> None:
        for target in self._targets:
            target.incr(key, value)

    def timing(self, key: str, ms: float) -> None:
        for target in self._targets:
            target.timing(key, ms)

    def gauge(self, key: str, value: float) -> None:
        for target in self._targets:
            target.gauge(key, value)
