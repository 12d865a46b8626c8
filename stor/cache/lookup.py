"""The lookup cache (docs/SPEC.md §4): ``sha → path`` of a local hit, so a GET can skip the disk walk.

An in-process LRU answers first, without leaving the reactor thread.  Behind
it, when ``memcached_servers`` is configured, memcached is reached on the
reactor itself (:mod:`stor.cache.memcached`: one pipelined connection per
server, reconnected with backoff; ``bench/memcache.py`` measured it against
pymemcache in a thread pool, see docs/design.rst).  memcached is only ever an
optimisation: every error or timeout there is answered as a miss, a server
that stops answering is left alone for a while (``retry_timeout``, doubling up
to ``dead_timeout``) instead of being waited on by every request, and its
going down and coming back are logged once each.

Every memcached key is ``memcached_prefix + sha``, so several stor hosts can
share a memcached without reading each other's local paths; the default empty
prefix keeps the old service's keys.

A cached path can be stale (the file was removed behind stor's back): the
caller checks it and calls :meth:`~LookupCache.drop`, then looks on disk.

Both caches are :class:`~twisted.application.service.Service`\\ s: the
memcached one connects in ``startService`` and closes its connections in
``stopService``; before start and after stop it answers from the LRU only.
"""

from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.logger import Logger
from twisted.protocols.memcache import ClientError, NoSuchCommand, ServerError
from twisted.python.failure import Failure

from stor.config import Config
from stor.config.memcached import DEFAULT_TIMEOUT, MemcachedServer
from stor.cache.memcached import MemcachedClient, ServerDown
from stor.core.reactor import Reactor

T = TypeVar("T")

LRU_SIZE = 65_536
"""Entries kept in process: about 64 k paths (the old service's L1 was 1 MiB)."""

MAX_PENDING = 256
"""memcached requests in flight beyond which new ones are skipped (a miss)."""

RETRY_TIMEOUT = 1.0
DEAD_TIMEOUT = 10.0
"""A failing server is tried again after ``RETRY_TIMEOUT`` s, then twice as long
each time up to ``DEAD_TIMEOUT`` s; its keys are misses meanwhile."""

NETWORK_ERRORS = (ServerDown, TimeoutError, ConnectError, ConnectionClosed,
                  ServerError, ClientError, NoSuchCommand)
"""What memcached or the network can do to a request; anything else is a bug."""


@dataclass(frozen=True)
class CacheStats:
    """Counts since start, for tests and /metrics.

    ``misses`` counts every ``get`` answered None, whatever the reason;
    ``errors`` counts failed memcached requests (timeout, closed connection)
    and failed connection attempts, not the requests skipped while a server is
    down; ``skipped`` counts memcached calls not made because too many were
    already pending; ``servers_down`` names the servers currently left alone.
    """

    lru_hits: int = 0
    memcached_hits: int = 0
    misses: int = 0
    errors: int = 0
    skipped: int = 0
    servers_down: tuple[str, ...] = ()

    @property
    def hits(self) -> int:
        return self.lru_hits + self.memcached_hits


class LookupCache(Protocol):
    """What the routes use; both caches below also are Services to start and stop."""

    def get(self, sha: str) -> "Deferred[str | None]":
        """The cached path of ``sha``, or None; never fails."""

    def peek(self, sha: str) -> str | None:
        """The path this process itself remembers (no round trip), or None."""

    def put(self, sha: str, path: str) -> None:
        """Remember that ``sha`` was found at ``path``."""

    def drop(self, sha: str) -> None:
        """Forget ``sha``: its cached path turned out stale."""

    @property
    def stats(self) -> CacheStats: ...


class Lru:
    """A bounded mapping that forgets the least recently used entry first.

    Used on the reactor thread only, so it needs no lock.
    """

    def __init__(self, size: int = LRU_SIZE) -> None:
        if size < 1:
            raise ValueError("an LRU needs room for at least one entry")
        self.size = size
        self._entries: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> str | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: str) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


class LocalCache(Service):
    """The in-process LRU alone: used when no memcached server is configured."""

    def __init__(self, lru_size: int = LRU_SIZE) -> None:
        self._lru = Lru(lru_size)
        self._counts: Counter[str] = Counter()

    def get(self, sha: str) -> "Deferred[str | None]":
        path = self._lru.get(sha)
        if path is not None:
            self._counts["lru_hits"] += 1
            return succeed(path)
        return self._get_remote(sha)

    def peek(self, sha: str) -> str | None:
        """The path this process remembers for ``sha``, without asking memcached."""
        path = self._lru.get(sha)
        if path is not None:
            self._counts["lru_hits"] += 1
        return path

    def put(self, sha: str, path: str) -> None:
        self._lru.put(sha, path)

    def drop(self, sha: str) -> None:
        self._lru.drop(sha)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(**self._counts)  # type: ignore[arg-type]  # only int fields are counted

    def _get_remote(self, sha: str) -> "Deferred[str | None]":
        """The next level after an LRU miss: here there is none."""
        self._counts["misses"] += 1
        return succeed(None)


class MemcachedCache(LocalCache):
    """The LRU in front of memcached, on the reactor thread."""

    log = Logger()  # read through an instance: events carry it as their ``log_source``

    def __init__(
        self,
        servers: Sequence[MemcachedServer],
        reactor: Reactor,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        prefix: str = "",
        lru_size: int = LRU_SIZE,
        max_pending: int = MAX_PENDING,
        retry_timeout: float = RETRY_TIMEOUT,
        dead_timeout: float = DEAD_TIMEOUT,
    ) -> None:
        super().__init__(lru_size)
        if not servers:
            raise ValueError("MemcachedCache needs at least one server; use LocalCache")
        self.servers = tuple(servers)
        self._prefix = prefix.encode()
        self._max_pending = max_pending
        self._pending = 0
        self._dropping: Counter[str] = Counter()  # shas with a delete in flight
        self._drops = 0  # every drop so far: a get that saw one start must not refill the LRU
        self._down: set[str] = set()
        self._client = MemcachedClient(servers, reactor, timeout=timeout,
                                       retry_timeout=retry_timeout, dead_timeout=dead_timeout,
                                       on_state=self._server_state)

    # -- Service ----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._client.start()

    def stopService(self) -> "Deferred[list[None]]":
        """Stop taking memcached calls; fires once the connections are closed."""
        super().stopService()
        return self._client.stop()

    # -- the cache --------------------------------------------------------

    def put(self, sha: str, path: str) -> None:
        super().put(sha, path)
        self._call(self._client.set, sha, path.encode("utf-8", "surrogateescape"))

    def drop(self, sha: str) -> None:
        super().drop(sha)
        self._drops += 1
        self._dropping[sha] += 1
        self._call(self._client.delete, sha).addBoth(self._dropped, sha)

    @property
    def stats(self) -> CacheStats:
        counts = {**self._counts, "errors": self._counts["errors"] + self._client.connect_failures}
        return CacheStats(**counts, servers_down=tuple(sorted(self._down)))

    def _get_remote(self, sha: str) -> "Deferred[str | None]":
        if self._dropping[sha]:  # memcached may still hold the stale path
            return super()._get_remote(sha)
        drops_before = self._drops
        return self._call(self._client.get, sha).addCallback(self._fetched, sha, drops_before)

    def _fetched(self, value: bytes | None, sha: str, drops_before: int) -> str | None:
        if value is None or self._dropping[sha]:
            self._counts["misses"] += 1
            return None
        self._counts["memcached_hits"] += 1
        path = value.decode("utf-8", "surrogateescape")
        if sha not in self._lru and self._drops == drops_before:
            self._lru.put(sha, path)  # a put or drop meanwhile knows better
        return path

    def _dropped(self, _: object, sha: str) -> None:
        self._dropping[sha] -= 1
        if not self._dropping[sha]:
            del self._dropping[sha]

    # -- memcached --------------------------------------------------------

    def _call(self, request: "Callable[..., Deferred[T]]", sha: str,
              *args: Any) -> "Deferred[T | None]":
        """``request(key, *args)``; None when skipped or failed, never a failure."""
        if not self.running or not (sha.isascii() and sha.isalnum()):
            return succeed(None)  # stopped, or not a key memcached could take as one word
        if self._pending >= self._max_pending:
            self._counts["skipped"] += 1
            return succeed(None)
        self._pending += 1
        return request(self._prefix + sha.encode("ascii"), *args).addBoth(self._settled, request)

    def _settled(self, result: "T | Failure", request: Callable[..., object]) -> "T | None":
        """Back from memcached: a failure is a miss, counted unless no request was made."""
        self._pending -= 1
        if not isinstance(result, Failure):
            return result
        if result.check(ServerDown) or not self.running:
            return None  # no round trip was made, or the cache is closing its connections
        self._counts["errors"] += 1
        if not result.check(*NETWORK_ERRORS):  # a bug: logged, still a miss
            self.log.failure("memcached {request} failed unexpectedly", failure=result,
                             request=getattr(request, "__name__", request))
        return None

    def _server_state(self, server: str, error: BaseException | None) -> None:
        """Log a server's transitions only: down once, up once."""
        if error is None:
            self._down.discard(server)
            self.log.info("memcached {server} answers again", server=server, memcached="up")
        else:
            self._down.add(server)
            self.log.warn("memcached {server} is down ({error}); its keys are misses until it"
                          " answers", server=server, error=error, memcached="down")


def build_cache(config: Config, reactor: Reactor) -> LocalCache | MemcachedCache:
    """The cache ``config`` asks for; start it (it is a Service) before use."""
    memcached = config.memcached
    if not memcached.servers:
        return LocalCache()
    return MemcachedCache(memcached.servers, reactor, timeout=memcached.timeout,
                          prefix=memcached.prefix)
