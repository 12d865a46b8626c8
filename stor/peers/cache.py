"""The lookup cache (docs/SPEC.md §4): ``sha → path`` of a local hit, so a GET can skip the disk walk.

An in-process LRU answers first, without leaving the reactor thread.  Behind
it, when ``memcached_servers`` is configured, pymemcache's ``HashClient``
spreads keys over the servers; its blocking calls run in a small thread pool
of the cache's own, so a slow memcached can never stall the reactor or take
threads from the disk pool.  memcached is only ever an optimisation: every
error or timeout there is answered as a miss, and a server that fails is left
alone for a while (``retry_timeout``/``dead_timeout``) instead of being waited
on by every request.

A cached path can be stale (the file was removed behind stor's back): the
caller checks it and calls :meth:`~LookupCache.drop`, then looks on disk.

Both caches are :class:`~twisted.application.service.Service`\\ s: the
memcached one starts its thread pool in ``startService`` and stops it in
``stopService``; before start and after stop it answers from the LRU only.
"""

import queue
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheUnexpectedCloseError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from stor.config import Config

T = TypeVar("T")
Server = tuple[str, int]
Outcome = tuple[Server, BaseException | None]
"""A round trip to a server: None when it answered, else the error."""

LRU_SIZE = 65_536
"""Entries kept in process: about 64 k paths (the old service's L1 was 1 MiB)."""

THREADS = 3
"""memcached calls in flight at once; each blocks at most ``timeout`` seconds."""

MAX_PENDING = 256
"""memcached calls queued or running beyond which new ones are skipped (a miss)."""

RETRY_ATTEMPTS = 2
RETRY_TIMEOUT = 1.0
DEAD_TIMEOUT = 10.0
"""A failing server is retried after ``RETRY_TIMEOUT`` s, ``RETRY_ATTEMPTS`` times,
then left out for ``DEAD_TIMEOUT`` s (its keys count as misses meanwhile)."""


@dataclass(frozen=True)
class CacheStats:
    """Counts since start, for tests and /metrics.

    ``misses`` counts every ``get`` answered None, whatever the reason;
    ``errors`` counts failed memcached round trips (connect, timeout, closed
    connection); ``skipped`` counts memcached calls not made because too many
    were already pending; ``servers_down`` names servers whose last round trip failed.
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

    def put(self, sha: str, path: str) -> None:
        self._lru.put(sha, path)

    def drop(self, sha: str) -> None:
        self._lru.drop(sha)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(**self._counts)

    def _get_remote(self, sha: str) -> "Deferred[str | None]":
        """The next level after an LRU miss: here there is none."""
        self._counts["misses"] += 1
        return succeed(None)


class MemcachedCache(LocalCache):
    """The LRU in front of memcached, reached through a thread pool of its own.

    ``HashClient`` is not thread-safe (pymemcache issue #124), so each pool
    thread checks one out of a queue holding one client per thread: calls run
    in parallel, and every client keeps its own connections and its own
    record of failing servers.
    """

    log = Logger()  # read through an instance: events carry it as their ``log_source``

    def __init__(
        self,
        servers: Sequence[Server],
        reactor: Any,
        *,
        timeout: float = 0.25,
        lru_size: int = LRU_SIZE,
        threads: int = THREADS,
        max_pending: int = MAX_PENDING,
        retry_attempts: int = RETRY_ATTEMPTS,
        retry_timeout: float = RETRY_TIMEOUT,
        dead_timeout: float = DEAD_TIMEOUT,
    ) -> None:
        super().__init__(lru_size)
        if not servers:
            raise ValueError("MemcachedCache needs at least one server; use LocalCache")
        self.servers = tuple(servers)
        self._reactor = reactor
        self._threads = threads
        self._max_pending = max_pending
        self._pending = 0
        self._dropping: Counter[str] = Counter()  # shas with a delete in flight
        self._drops = 0  # every drop so far: a get that saw one start must not refill the LRU
        self._down: set[str] = set()
        self._pool: ThreadPool | None = None
        self._clients: queue.SimpleQueue[_Client] = queue.SimpleQueue()
        self._all_clients: list[_Client] = []
        for _ in range(threads):
            client = _Client(self.servers, timeout, retry_attempts, retry_timeout, dead_timeout)
            self._clients.put(client)
            self._all_clients.append(client)

    # -- Service ----------------------------------------------------------

    def startService(self) -> None:
        """Start the thread pool (a new one each time: a stopped pool cannot restart)."""
        self._pool = ThreadPool(minthreads=1, maxthreads=self._threads, name="stor-memcached")
        self._pool.start()
        super().startService()

    def stopService(self) -> None:
        """Stop taking memcached calls, wait for those queued, close the connections.

        Waiting blocks the reactor thread, but each queued call is bounded
        by the timeout and a failing server makes the rest return at once.
        """
        super().stopService()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.stop()
        for client in self._all_clients:
            client.close()

    # -- the cache --------------------------------------------------------

    def put(self, sha: str, path: str) -> None:
        super().put(sha, path)
        self._call(_set, sha, path.encode("utf-8", "surrogateescape"))

    def drop(self, sha: str) -> None:
        super().drop(sha)
        self._drops += 1
        self._dropping[sha] += 1
        self._call(_delete, sha).addBoth(self._dropped, sha)

    @property
    def stats(self) -> CacheStats:
        return CacheStats(**self._counts, servers_down=tuple(sorted(self._down)))

    def _get_remote(self, sha: str) -> "Deferred[str | None]":
        if self._dropping[sha]:  # memcached may still hold the stale path
            return super()._get_remote(sha)
        drops_before = self._drops
        d = self._call(_get, sha)
        d.addCallback(self._fetched, sha, drops_before)
        return d

    def _fetched(self, path: str | None, sha: str, drops_before: int) -> str | None:
        if path is None or self._dropping[sha]:
            self._counts["misses"] += 1
            return None
        self._counts["memcached_hits"] += 1
        if sha not in self._lru and self._drops == drops_before:
            self._lru.put(sha, path)  # a put or drop meanwhile knows better
        return path

    def _dropped(self, _: object, sha: str) -> None:
        self._dropping[sha] -= 1
        if not self._dropping[sha]:
            del self._dropping[sha]

    # -- the thread pool --------------------------------------------------

    def _call(self, op: Callable[..., T], sha: str, *args: Any) -> "Deferred[T | None]":
        """Run ``op`` with a client in the pool; None when skipped or failed, never a failure."""
        if self._pool is None:
            return succeed(None)
        if self._pending >= self._max_pending:
            self._counts["skipped"] += 1
            return succeed(None)
        self._pending += 1
        d = deferToThreadPool(self._reactor, self._pool, self._with_client, op, sha, *args)
        d.addBoth(self._settled)
        d.addErrback(self._unexpected, op)
        return d

    def _with_client(self, op: Callable[..., T], *args: Any) -> tuple[T, list[Outcome]]:
        """In a pool thread: ``op`` with a client no other thread is using, and how it went."""
        client = self._clients.get_nowait()  # never empty: one client per pool thread
        try:
            return op(client.hash, *args), client.outcomes[:]
        finally:
            client.outcomes.clear()
            self._clients.put(client)

    def _settled(self, result: "tuple[T, list[Outcome]] | Failure") -> "T | Failure":
        """Back on the reactor thread: note the round trips, pass the value on."""
        self._pending -= 1
        if isinstance(result, Failure):
            return result
        value, outcomes = result
        for server, error in outcomes:
            self._record(server, error)
        return value

    def _unexpected(self, failure: Failure, op: Callable[..., object]) -> None:
        """Not a network error (``HashClient`` swallows those): a bug, logged, still a miss."""
        self._counts["errors"] += 1
        self.log.failure("memcached {op} failed unexpectedly", failure=failure, op=op.__name__)
        return None

    def _record(self, server: Server, error: BaseException | None) -> None:
        """On the reactor thread: one round trip's outcome; log only up/down transitions."""
        name = f"{server[0]}:{server[1]}"
        if error is None:
            if name in self._down:
                self._down.discard(name)
                self.log.info("memcached {server} answers again", server=name, memcached="up")
            return
        self._counts["errors"] += 1
        if name not in self._down:
            self._down.add(name)
            self.log.warn("memcached {server} failed ({error!r}); its keys are misses until it"
                          " answers", server=name, error=error, memcached="down")


def build_cache(config: Config, reactor: Any) -> LocalCache | MemcachedCache:
    """The cache ``config`` asks for; start it (it is a Service) before use."""
    if not config.memcached_servers:
        return LocalCache()
    return MemcachedCache(config.memcached_servers, reactor, timeout=config.memcached_timeout)


# -- in pool threads ------------------------------------------------------


def _get(client: HashClient, sha: str) -> str | None:
    value = client.get(sha)
    return None if value is None else bytes(value).decode("utf-8", "surrogateescape")


def _set(client: HashClient, sha: str, value: bytes) -> None:
    client.set(sha, value)


def _delete(client: HashClient, sha: str) -> None:
    client.delete(sha)


class _Client:
    """A ``HashClient`` for one pool thread at a time, and the outcomes of its round trips.

    The ``HashClient`` swallows errors (``ignore_exc``); its connections note
    each round trip in :attr:`outcomes`, which the calling thread hands back
    to the reactor with the result.  Replies are awaited
    (``default_noreply=False``) so a failed set or delete is seen, and one
    issued before a get on another thread has landed.
    """

    def __init__(self, servers: Sequence[Server], timeout: float, retry_attempts: int,
                 retry_timeout: float, dead_timeout: float) -> None:
        self.outcomes: list[Outcome] = []
        self.hash = HashClient(
            [],
            connect_timeout=timeout,
            timeout=timeout,
            no_delay=True,
            ignore_exc=True,
            retry_attempts=retry_attempts,
            retry_timeout=retry_timeout,
            dead_timeout=dead_timeout,
            default_noreply=False,
        )
        # HashClient makes each server's client, also when reviving a dead one, with client_class
        self.hash.client_class = partial(  # type: ignore[assignment]
            _ReportingClient, note=self.outcomes.append)
        for host, port in servers:
            self.hash.add_server(host, port)

    def close(self) -> None:
        """Close every connection (``HashClient.close`` skips servers it thinks are failing)."""
        for client in list(self.hash.clients.values()):
            client.close()


class _ReportingClient(Client):
    """One server's connection, telling the cache whether each round trip worked.

    ``HashClient(ignore_exc=True)`` turns errors into misses and keeps them to
    itself; this is where the cache learns of them, to count them and to log
    a server going down or coming back.  A connection the server has closed
    (memcached restarted, an idle timeout on the way) is retried once on a
    fresh one rather than counted as an outage.
    """

    def __init__(self, server: Any, note: Callable[[Outcome], None], **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._note = note

    def get(self, key: Any, default: Any = None) -> Any:
        return self._round_trip(super().get, key, default)

    def set(self, key: Any, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> Any:
        return self._round_trip(super().set, key, value, expire, noreply, flags)

    def delete(self, key: Any, noreply: bool | None = None) -> Any:
        return self._round_trip(super().delete, key, noreply)

    def _round_trip(self, op: Callable[..., T], *args: Any) -> T:
        try:
            result = self._once_more_if_stale(op, *args)
        except Exception as e:
            self._note((self.server, e))
            raise
        self._note((self.server, None))
        return result

    def _once_more_if_stale(self, op: Callable[..., T], *args: Any) -> T:
        reused = self.sock is not None
        try:
            return op(*args)
        except (MemcacheUnexpectedCloseError, ConnectionError):
            if not reused:
                raise
        return op(*args)  # the client closed the broken socket: this connects afresh
