"""``GET /metrics``: Prometheus text format, next to (not instead of) statsite.

What an operator graphs and alerts on:

=========================================  ==========================================
``stor_http_requests_total{method,status}``  requests answered (or lost: status 499)
``stor_http_response_bytes_total{method}``   body bytes sent
``stor_http_request_bytes_total{method}``    upload bytes received
``stor_http_request_duration_seconds``       latency histogram by method, from the
                                             request line to the last byte
``stor_http_requests_in_flight``             requests begun and not yet finished
``stor_storage_up{storage}``                 1 when the storage is healthy (as ``/status``)
``stor_storage_free_bytes{storage}``         ``statvfs`` free bytes, read at scrape time
``stor_storage_size_bytes{storage}``         ``statvfs`` total bytes of its filesystem (with
                                             the free bytes: a "% full" alert)
``stor_storage_writable{storage}``           1 when ``writable_pairs_regex`` lets it take files
``stor_http_rejected_total{reason}``         requests refused before routing (408/414/431)
                                             and upload bodies cut for silence
``stor_uploads_total{outcome}``              uploads answered: stored, duplicate, too_large,
                                             bad_sha, no_space, malformed_sha, unauthorized,
                                             conflict, failed
``stor_storage_errors_total{storage}``       a storage failed while written (the upload
                                             moved on to another pair); ``storage`` is the
                                             path, as in every other ``storage`` label
``stor_corrupt_replicas_total``              replicas found not to hash to their name
``stor_read_errors_total{storage}``          replicas that failed to read (an error, a stall
                                             past ``read_hedge_after``, wrong bytes once):
                                             the twin was tried (docs/durability.rst)
``stor_repairs_total{outcome}``              replica repairs: queued, done, failed,
                                             dropped, quarantined
``stor_s3_errors_total``                     S3 reads that failed (served locally instead)
``stor_s3_bad_objects_total``                S3 objects that did not hash to their name
``stor_s3_puts_total{outcome}``              write-through puts: ok, error, present, corrupt
``stor_s3_outbox_depth``                     files waiting for S3 (write-through)
``stor_s3_outbox_oldest_age_seconds``        age of the oldest file waiting for S3 (0: none
                                             waits); alert when it keeps growing
``stor_deletes_total``                       files removed by DELETE
``stor_cache_hits_total{layer}``             lookup cache hits (``lru``, ``memcached``)
``stor_cache_misses_total``                  lookup cache misses
``stor_cache_errors_total``                  failed memcached round trips
``stor_memcached_up{server}``                1 while every serving process reaches the
                                             server (only with ``memcached_servers``)
``stor_amqp_connected``                      processes with an open AMQP channel (this and
                                             the other ``stor_amqp_*`` only with
                                             ``rabbitmq_uri``: no alert fires on a host
                                             without AMQP)
``stor_amqp_buffered_messages``              SHAs waiting for the broker
``stor_amqp_dropped_messages_total``         SHAs dropped for buffer space
``stor_build_info{version}``                 always 1
=========================================  ==========================================

With ``--workers N`` every worker writes its counters to files in the
directory named by ``PROMETHEUS_MULTIPROC_DIR`` (the parent sets it up) and
whichever worker answers ``/metrics`` reports the sum over all of them
(prometheus-client's multiprocess mode).  Request counts and values kept by
other objects (cache statistics, the AMQP publisher's state) are copied into
the metrics every second and at each scrape, so a request does not pay for
metric locks: the answering worker's figures are current, its siblings' at
most a second old.  The scrape's disk work (``statvfs``, reading the
multiprocess files) runs in the store's thread pool, never on the reactor.
"""

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from stor import __version__
from stor.core.reactor import Reactor
from stor.disk.health import StorageHealth

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"})
SYNC_PERIOD = 1.0


def multiprocess() -> bool:
    """Whether this process shares its metrics with sibling workers."""
    return bool(os.environ.get(MULTIPROC_ENV))


class _Storages:
    """A collector for the per-storage gauges measured just before each scrape."""

    def __init__(self) -> None:
        self.up: dict[str, bool] = {}
        self.free: dict[str, int | None] = {}
        self.size: dict[str, int | None] = {}
        self.writable: dict[str, bool] = {}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("stor_storage_up", "1 when the storage is healthy (as /status).",
                               labels=["storage"])
        for storage, ok in self.up.items():
            up.add_metric([storage], 1 if ok else 0)
        yield up
        free = GaugeMetricFamily("stor_storage_free_bytes",
                                 "Bytes available on the storage's filesystem (statvfs).",
                                 labels=["storage"])
        for storage, value in self.free.items():
            if value is not None:
                free.add_metric([storage], value)
        yield free
        size = GaugeMetricFamily("stor_storage_size_bytes",
                                 "Total bytes of the storage's filesystem (statvfs).",
                                 labels=["storage"])
        for storage, value in self.size.items():
            if value is not None:
                size.add_metric([storage], value)
        yield size
        writable = GaugeMetricFamily("stor_storage_writable",
                                     "1 when writable_pairs_regex lets the storage take new files.",
                                     labels=["storage"])
        for storage, ok in self.writable.items():
            writable.add_metric([storage], 1 if ok else 0)
        yield writable
        info = GaugeMetricFamily("stor_build_info", "The running stor version.",
                                 labels=["version"])
        info.add_metric([__version__], 1)
        yield info


_IGNORED = object()
"""A statsite key with no Prometheus counterpart."""


class StatsdMirror:
    """The statsite events an operator also wants in Prometheus, as counters.

    It is a :class:`~stor.core.metrics.Metrics` (the daemon sends every event
    to statsite and to this), so the store and the HTTP layer count once and
    both systems see the same figures.
    """

    _UPLOADS = {"success.post.write.count": "stored",
                "success.post.duplicate.count": "duplicate",
                "error.post.too_large.count": "too_large",
                "error.post.bad_sha.count": "bad_sha",
                "error.post.no_space.count": "no_space",
                "error.post.malformed_sha.count": "malformed_sha",
                "error.post.unauthorized.count": "unauthorized",
                "error.post.conflict.count": "conflict",
                "error.post.unknown.count": "failed"}

    def __init__(self, registry: CollectorRegistry | None,
                 storage_of: Callable[[str], str | None] = lambda server: server) -> None:
        self._counts: dict[str, Any] = {}
        self._storage_of = storage_of
        """statsite's ``<server>`` segment back to the storage path, the label every
        other per-storage metric uses."""
        self.uploads = Counter("stor_uploads", "Uploads answered, by outcome.", ["outcome"],
                               registry=registry)
        self.storage_errors = Counter("stor_storage_errors",
                                      "Storage failures while writing, by storage.",
                                      ["storage"], registry=registry)
        self.corrupt = Counter("stor_corrupt_replicas", "Replicas found corrupt.",
                               registry=registry)
        self.read_errors = Counter("stor_read_errors",
                                   "Replicas that failed to read (error, stall, misread), "
                                   "by storage.", ["storage"], registry=registry)
        self.repairs = Counter("stor_repairs", "Replica repairs, by outcome.", ["outcome"],
                               registry=registry)
        self.s3_errors = Counter("stor_s3_errors", "S3 reads that failed.", registry=registry)
        self.s3_bad = Counter("stor_s3_bad_objects", "S3 objects not hashing to their name.",
                              registry=registry)
        self.s3_puts = Counter("stor_s3_puts", "Write-through puts, by outcome.", ["outcome"],
                               registry=registry)
        self.outbox = Gauge("stor_s3_outbox_depth", "Files waiting for S3 (write-through).",
                            registry=registry, multiprocess_mode="livesum")
        self.deletes = Counter("stor_deletes", "Files removed by DELETE.", registry=registry)

    def incr(self, key: str, value: int = 1) -> None:
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = self._counter_for(key)
        if count is not _IGNORED:
            count.inc(value)

    def _counter_for(self, key: str) -> Any:
        """The counter a statsite key feeds (looked up once a key), or :data:`_IGNORED`."""
        outcome = self._UPLOADS.get(key)
        if outcome is not None:
            return self.uploads.labels(outcome)
        if key.startswith("error.storage.") and key.endswith(".count"):
            server = key[len("error.storage."):-len(".count")]
            return self.storage_errors.labels(self._storage_of(server))
        if key == "error.get.corrupt_replica.count":
            return self.corrupt
        if key.startswith("error.read.") and key.endswith(".count"):
            server = key[len("error.read."):-len(".count")]
            return self.read_errors.labels(self._storage_of(server))
        if key.startswith("repair.") and key.endswith(".count"):
            return self.repairs.labels(key[len("repair."):-len(".count")])
        if key == "error.get.hcp_error.count":
            return self.s3_errors
        if key == "error.get.hcp_bad_sha.count":
            return self.s3_bad
        if key.startswith("s3.put."):
            return self.s3_puts.labels(key[len("s3.put."):])
        if key == "success.delete.count":
            return self.deletes
        return _IGNORED

    def timing(self, key: str, ms: float) -> None:
        pass

    def gauge(self, key: str, value: float) -> None:
        if key == "s3.outbox.depth":
            self.outbox.set(value)


@dataclass(frozen=True)
class AmqpState:
    """What the AMQP publisher reports."""

    connected: bool
    buffered: int
    dropped: int


Runner = Callable[..., "Deferred[Any]"]


@dataclass(frozen=True)
class Registries:
    """Where one process's metrics live: ``page``, the registry its ``/metrics`` page is
    built from, and ``own``, the one its metrics register in — None under
    ``--workers``, where values live in the shared files the page collects."""

    page: CollectorRegistry
    own: CollectorRegistry | None

    @classmethod
    def create(cls) -> "Registries":
        disable_created_metrics()  # the *_created series only add noise to every counter
        page = CollectorRegistry(auto_describe=True)
        if multiprocess():
            from prometheus_client.multiprocess import MultiProcessCollector

            MultiProcessCollector(page)
            return cls(page, None)
        from prometheus_client import ProcessCollector

        ProcessCollector(registry=page)
        return cls(page, page)


class Exporter:
    """Prometheus metrics of one stor process, from the sources it is given.

    ``storages`` (blocking: run in ``run``, the disk pool) measures every
    storage at scrape time; ``writable`` is the writable rule;
    ``cache_stats`` and ``amqp_state`` are read every second and at each
    scrape (either may be absent).
    """

    def __init__(self, storages: Callable[[], list[StorageHealth]],
                 writable: Callable[[str], bool], run: Runner, *,
                 registries: "Registries | None" = None,
                 events: "StatsdMirror | None" = None,
                 cache_stats: Callable[[], Any] | None = None,
                 amqp_state: Callable[[], AmqpState] | None = None,
                 outbox_state: Callable[[], dict[str, Any]] | None = None,
                 storage_of: Callable[[str], str | None] = lambda server: server,
                 memcached_servers: Sequence[str] = ()) -> None:
        self._storages_blocking = storages
        self._memcached_servers = tuple(memcached_servers)
        self._writable = writable
        self._run = run
        self._cache_stats = cache_stats
        self._amqp_state = amqp_state
        self._outbox_state = outbox_state
        """The write-through outbox's :meth:`~stor.s3.outbox.Outbox.state`, when there is one."""
        registries = registries or Registries.create()
        self.registry = registries.page
        own = registries.own
        self.requests = Counter("stor_http_requests", "HTTP requests by method and status.",
                                ["method", "status"], registry=own)
        self.sent = Counter("stor_http_response_bytes", "Response body bytes sent.",
                            ["method"], registry=own)
        self.received = Counter("stor_http_request_bytes", "Request body bytes received.",
                                ["method"], registry=own)
        self.duration = Histogram("stor_http_request_duration_seconds",
                                  "Time from the request line to the last byte of the answer.",
                                  ["method"], buckets=LATENCY_BUCKETS, registry=own)
        self.in_flight = Gauge("stor_http_requests_in_flight", "Requests not yet answered.",
                               registry=own, multiprocess_mode="livesum")
        self.cache_hits = Counter("stor_cache_hits", "Lookup cache hits.", ["layer"], registry=own)
        self.cache_misses = Counter("stor_cache_misses", "Lookup cache misses.", registry=own)
        self.cache_errors = Counter("stor_cache_errors", "Failed memcached round trips.",
                                    registry=own)
        amqp = own if amqp_state is not None else None  # no AMQP gauges without AMQP
        self.amqp_connected = Gauge("stor_amqp_connected",
                                    "Processes with an open AMQP channel (0 or 1 per worker).",
                                    registry=amqp, multiprocess_mode="livesum")
        self.amqp_buffered = Gauge("stor_amqp_buffered_messages",
                                   "SHAs buffered while the broker is away.",
                                   registry=amqp, multiprocess_mode="livesum")
        self.amqp_dropped = Counter("stor_amqp_dropped_messages",
                                    "SHAs dropped because the buffer was full.", registry=amqp)
        self.memcached_up = Gauge("stor_memcached_up",
                                  "1 while every serving process reaches the memcached server.",
                                  ["server"], registry=own if memcached_servers else None,
                                  multiprocess_mode="livemin")
        self.events = events or StatsdMirror(own, storage_of)
        """The statsite events mirrored here (given when the daemon's metrics must exist
        before the exporter's other sources do, as the outbox's)."""
        self.rejected = Counter("stor_http_rejected", "Requests refused before routing (408, "
                                "414, 431) and upload bodies cut for silence, by reason.",
                                ["reason"], registry=own)
        self.outbox_age = Gauge("stor_s3_outbox_oldest_age_seconds",
                                "Seconds the oldest file waiting for S3 has waited (0: none).",
                                registry=own, multiprocess_mode="livemax")
        self._storages = _Storages()
        self.registry.register(self._storages)
        self._children: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}
        self._tallies: dict[tuple[str, int], list[int]] = {}
        self._started = self._ended = 0
        self._seen: dict[str, int] = {}

    # -- per request (called by StorSite when a request ends) -----------------

    def request_started(self) -> None:
        self._started += 1

    def request_ended(self, method: str, status: int, sent: int, received: int,
                      seconds: float) -> None:
        """Tallied in plain integers (a request must not pay for locks and label
        lookups); :meth:`sync` moves them into the metrics every second and
        before each scrape.  Only the latency histogram is fed at once."""
        tally = self._tallies.get((method, status))
        if tally is None:
            label = method if method in METHODS else "other"
            tally = self._tallies[(method, status)] = [0, 0, 0]
            self._children[(method, status)] = (
                self.requests.labels(label, str(status)), self.sent.labels(label),
                self.received.labels(label), self.duration.labels(label))
        tally[0] += 1
        tally[1] += sent
        tally[2] += received
        self._children[(method, status)][3].observe(seconds)
        self._ended += 1

    def _sync_requests(self) -> None:
        for key, tally in self._tallies.items():
            if tally[0]:
                count, sent, received, _ = self._children[key]
                count.inc(tally[0])
                if tally[1]:
                    sent.inc(tally[1])
                if tally[2]:
                    received.inc(tally[2])
                tally[0] = tally[1] = tally[2] = 0
        self.in_flight.set(self._started - self._ended)

    def request_rejected(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    # -- values other objects keep --------------------------------------------

    def sync(self) -> None:
        """Copy request tallies, the cache's and the publisher's state into metrics
        (reactor thread)."""
        self._sync_requests()
        if self._cache_stats is not None:
            stats = self._cache_stats()
            self._advance(self.cache_hits.labels("lru"), "lru", stats.lru_hits)
            self._advance(self.cache_hits.labels("memcached"), "memcached", stats.memcached_hits)
            self._advance(self.cache_misses, "misses", stats.misses)
            self._advance(self.cache_errors, "errors", stats.errors)
            down = set(stats.servers_down)
            for server in self._memcached_servers:
                self.memcached_up.labels(server).set(0 if server in down else 1)
        if self._amqp_state is not None:
            state = self._amqp_state()
            self.amqp_connected.set(1 if state.connected else 0)
            self.amqp_buffered.set(state.buffered)
            self._advance(self.amqp_dropped, "amqp_dropped", state.dropped)
        if self._outbox_state is not None:  # current at each scrape, not at the statsd period
            outbox = self._outbox_state()
            self.outbox_age.set(outbox["oldest_age"] or 0.0)
            self.events.outbox.set(outbox["depth"])

    def _advance(self, counter: Any, key: str, total: int) -> None:
        delta = total - self._seen.get(key, 0)
        if delta > 0:
            counter.inc(delta)
            self._seen[key] = total

    # -- the scrape -------------------------------------------------------------

    def scrape(self) -> "Deferred[bytes]":
        """The metrics page; disk work (statvfs, shared files) in the disk pool."""
        self.sync()

        def measure_and_render() -> bytes:
            health = self._storages_blocking()
            self._storages.up = {h.path: h.ok for h in health}
            self._storages.free = {h.path: h.free_bytes for h in health}
            self._storages.size = {h.path: h.size_bytes for h in health}
            self._storages.writable = {h.path: self._writable(h.path) for h in health}
            return generate_latest(self.registry)

        return self._run(measure_and_render)

    def page(self) -> "Deferred[tuple[bytes, bytes]]":
        """``GET /metrics``: (content type, body)."""
        return self.scrape().addCallback(lambda body: (CONTENT_TYPE_LATEST.encode(), body))


class SyncService(Service):
    """Calls :meth:`Exporter.sync` every second, so sibling workers' scrapes see it."""

    def __init__(self, exporter: Exporter, reactor: Reactor, period: float = SYNC_PERIOD) -> None:
        self._exporter = exporter
        self._loop = LoopingCall(exporter.sync)
        self._loop.clock = reactor
        self._period = period

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._period, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
