"""Test doubles for the store, so its read and write policy run without a reactor.

The store hands blocking work to a pool and gets Deferreds back; here the
pool is :class:`SyncPool` (runs each call at once: every Deferred has fired
when ``run`` returns) or :class:`ManualPool` (runs queued calls only when the
test says so, to look at what happens in between).  Everything else is real:
storages are directories, files are files.
"""

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from stor.core.placement import Pair
from stor.disk.health import StorageHealth, check_storages
from stor.disk.locks import ShaLocks
from stor.disk.local import LocalStore
from stor.store.store import Store
from support.helpers import sha256


class SyncPool:
    """Runs a blocking call at once; the Deferred has its result on return."""

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        try:
            return succeed(f(*args))
        except BaseException:
            return fail(Failure())

    def stop(self) -> None:
        pass


class ManualPool:
    """Queues blocking calls; :meth:`step` runs the oldest (in the test's thread)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        d: Deferred[Any] = Deferred()
        self.jobs.append((d, f, args))
        return d

    def step(self) -> None:
        d, f, args = self.jobs.pop(0)
        try:
            result = f(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def drain(self) -> None:
        while self.jobs:
            self.step()


class RecordingMetrics:
    """Counts what the store reports, as statsite would."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.timings: Counter[str] = Counter()

    def incr(self, key: str, value: int = 1) -> None:
        self.counts[key] += value

    def timing(self, key: str, ms: float) -> None:
        self.timings[key] += 1

    def gauge(self, key: str, value: float) -> None:
        pass


@implementer(IConsumer)
class Collect:
    """A consumer keeping every byte written (a client that reads at once)."""

    def __init__(self) -> None:
        self.data = b""
        self.producer: IPushProducer | None = None

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.data += data


@implementer(IPushProducer)
class Connection:
    """The producer of an upload body: records pause/resume."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def roomiest_first(sizes: dict[str, int]) -> Callable[..., list[StorageHealth]]:
    """A health check reporting real problems but these free sizes (all below the
    balance threshold, so the roomiest pair is always the one chosen)."""

    def health(storages: Any, check_mounts: Any, with_free: bool) -> list[StorageHealth]:
        real = {h.path: h for h in check_storages(storages, check_mounts, False)}
        return [StorageHealth(s, real[s].problem, real[s].placeable, sizes.get(s, 0))
                for s in storages]

    return health


def make_store(pairs: list[Pair] | list[list[str]], lock_dir: str, pool: Any = None,
               metrics: RecordingMetrics | None = None, **kwargs: Any) -> Store:
    """A Store over real directories, with ``pool`` (default :class:`SyncPool`)."""
    local_args = {k: kwargs.pop(k) for k in ("writable_regex", "health") if k in kwargs}
    if "writable_regex" in local_args:
        local_args["writable_regex"] = re.compile(local_args["writable_regex"])
    local = LocalStore([tuple(p) for p in pairs], pool or SyncPool(), check_mounts=False,
                       rng=random.Random(7), **local_args)
    return Store(local, ShaLocks(lock_dir), metrics=metrics, **kwargs)
