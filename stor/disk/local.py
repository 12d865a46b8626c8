"""The local storage pairs: find and open files, judge storages, choose a pair.

:class:`LocalStore` owns the configured pairs and the rules that need disks:
the lookup order, the writable rule (``writable_pairs_regex``), storage health
and the choice of a pair for a new file.  Lookups run on the reactor only when
the kernel promises not to wait (:mod:`stor.disk.nowait`), otherwise in the disk
pool; the blocking helpers are plain functions, also used by uploads, repair
and scrub from pool threads.

Names say whether a call may wait: ``*_blocking`` may wait for a disk and runs
only in a pool thread; ``*_nowait`` never waits (it answers, or says it would
have to: :data:`BLOCKED`) and is safe on the reactor; a call returning a
Deferred does its waiting elsewhere.
"""

import os
import random
import re
import stat
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import IO, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.logger import Logger

from stor.core import layout, placement
from stor.core.placement import Pair
from stor.disk import nowait
from stor.disk.diskpool import DiskPool
from stor.disk.duplicate import Existing, hash_fd, verified_existing
from stor.disk.verified import VERIFIED, Stamp, stamp_of
from stor.disk.health import StorageHealth, check_storages
from stor.disk.readfaults import ReadFault, ReadFaults, fault_of

T = TypeVar("T")

PLACEMENT_TTL = 1.0
"""Seconds a health answer places small uploads (:meth:`LocalStore.choose_pair_cached_blocking`)."""
_log = Logger()

SMALL_FILE = 64 * 1024
"""Files up to this size are read whole by the lookup (one hop per GET) and
verified before the answer; larger ones are streamed and verified on the way."""
FIRST_BLOCK = 64 * 1024
"""What the lookup reads of a larger file before a GET or HEAD is answered: a
replica that cannot be read (or stalls) is passed over for its twin before
the headers go out, rather than cut after them (docs/durability.rst)."""

log = Logger()


@dataclass(frozen=True)
class Hit:
    """A file found on a storage.

    ``data`` holds the whole content of a small file, for a GET and a HEAD
    alike (both verify it); a GET gets a larger file handed over open; a HEAD
    of a larger file has neither, but ``digest`` when it had to be hashed
    (see :mod:`stor.disk.verified`).
    """

    storage: str
    path: str
    size: int
    mtime: float
    attempt: int
    ident: tuple[int, int]
    """``(st_dev, st_ino)``: which file this was, should it need to be moved aside."""
    data: bytes | None = None
    file: IO[bytes] | None = None
    stamp: Stamp | None = None
    """What the file was when opened (:mod:`stor.disk.verified`)."""
    digest: str | None = None
    """A large HEAD's replica hashed now (not known verified): its sha256."""
    faults: tuple[ReadFault, ...] = ()
    """Replicas passed over on the way to this one because they failed to read."""

    def close(self) -> None:
        """Release the open file, when the body will not be sent after all."""
        if self.file is not None:
            self.file.close()


@dataclass(frozen=True)
class Unreadable:
    """No storage in the order could deliver the file, and some failed to read it
    (an error other than "not there"): the file may well be stored, so this is
    a storage fault, never a 404."""

    errors: tuple[tuple[str, OSError], ...]
    faults: tuple[ReadFault, ...] = ()

    def __str__(self) -> str:
        return "; ".join(f"{path}: {e.strerror or e}" for path, e in self.errors)


class Progress:
    """Where a blocking lookup is (set by its thread, read by the reactor's hedge)."""

    def __init__(self) -> None:
        self.storage: str | None = None
        self.abandoned = False
        """Another attempt answered: try no further storage."""


def open_first_blocking(order: Sequence[str], sha: str, head: bool = False,
                        progress: Progress | None = None) -> "Hit | Unreadable | None":
    """Blocking: ``sha``'s file on the first storage in ``order`` that has it.

    A storage that fails to read it (open, the first block, a small file
    whole) is passed over for the next, the failure kept as a fault of the
    answer; when none delivers, the failures are the answer
    (:class:`Unreadable`), not a miss.
    """
    rel = layout.relative_path(sha)
    errors: list[tuple[str, OSError]] = []
    faults: list[ReadFault] = []
    for attempt, storage in enumerate(order, start=1):
        if progress is not None:
            if progress.abandoned:
                break
            progress.storage = storage
        path = os.path.join(storage, rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            hit = _hit(fd, storage, path, attempt, head, cached_only=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            errors.append((path, e))
            faults.append(fault_of(storage, path, e))
            continue
        if isinstance(hit, Hit):
            return replace(hit, faults=tuple(faults)) if faults else hit
    return Unreadable(tuple(errors), tuple(faults)) if errors else None


class _Blocked:
    """Marker: answering without a thread could wait for a disk."""


BLOCKED = _Blocked()


def open_nowait(order: Sequence[str], sha: str, head: bool = False) -> "Hit | None | _Blocked":
    """:func:`open_first_blocking` using only cached data: the answer, or :data:`BLOCKED`
    as soon as anything would need a disk."""
    rel = layout.relative_path(sha)
    for attempt, storage in enumerate(order, start=1):
        path = os.path.join(storage, rel)
        try:
            fd = nowait.open_cached(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return BLOCKED  # let the thread path decide what an odd error means
        if fd is None:
            return BLOCKED
        hit = _hit(fd, storage, path, attempt, head, cached_only=True)
        if hit is not None:
            return hit
    return None


def _hit(fd: int, storage: str, path: str, attempt: int, head: bool,
         cached_only: bool) -> "Hit | _Blocked | None":
    """The Hit for an open ``fd``, which this owns (it is closed unless handed over).

    With ``cached_only`` a small file is read only from the page cache
    (:data:`BLOCKED` otherwise); without, an I/O error is a miss.
    """
    keep = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        ident, stamp = (st.st_dev, st.st_ino), stamp_of(st)
        if head and st.st_size > SMALL_FILE:
            return _large_head(fd, storage, path, st, attempt, cached_only)
        if st.st_size > SMALL_FILE:
            if not _first_block(fd, cached_only):
                return BLOCKED
            keep = True
            return Hit(storage, path, st.st_size, st.st_mtime, attempt, ident,
                       file=os.fdopen(fd, "rb", buffering=0), stamp=stamp)
        if cached_only:
            data = nowait.read_cached(fd, st.st_size)
            if data is None:
                return BLOCKED
        else:
            data = os.pread(fd, st.st_size + 1, 0)  # one more: a file that grew is noticed
        return Hit(storage, path, len(data), st.st_mtime, attempt, ident, data=data, stamp=stamp)
    except OSError:
        if cached_only:
            return BLOCKED
        raise  # the caller tells a read error from a miss
    finally:
        if not keep:
            os.close(fd)


def _large_head(fd: int, storage: str, path: str, st: os.stat_result, attempt: int,
                cached_only: bool) -> "Hit | _Blocked":
    """A HEAD of a large file answers what a GET would: from a verification this
    process remembers for this very file, else by hashing it now (blocking;
    :data:`BLOCKED` on the reactor).  The caller compares ``digest``."""
    stamp = stamp_of(st)
    hit = Hit(storage, path, st.st_size, st.st_mtime, attempt, (st.st_dev, st.st_ino),
              stamp=stamp)
    if VERIFIED.knows(path, stamp):
        # what a GET reads before its headers, a HEAD reads too: they answer alike
        return hit if _first_block(fd, cached_only) else BLOCKED
    if cached_only:
        return BLOCKED
    return replace(hit, digest=hash_fd(fd))


def _first_block(fd: int, cached_only: bool) -> bool:
    """Read :data:`FIRST_BLOCK` of a large file: True when done, False when it is not
    cached (``cached_only``); a read error is raised (the caller passes the replica over)."""
    if cached_only:
        data = nowait.read_at(fd, FIRST_BLOCK, 0)
        return data is not None and len(data) == FIRST_BLOCK
    os.pread(fd, FIRST_BLOCK, 0)
    return True


def present(storage: str, sha: str) -> bool:
    """Blocking: whether ``storage`` holds a regular file for ``sha``."""
    return os.path.isfile(layout.file_path(storage, sha))


class LocalStore:
    """The configured storage pairs, used through Deferred-returning methods
    on the reactor and blocking ones (named so) from pool threads."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        pool: DiskPool,
        writable_regex: re.Pattern[str] = re.compile(".*"),
        balance_threshold: int = placement.BALANCE_THRESHOLD,
        check_mounts: bool | None = True,
        rng: random.Random | None = None,
        health: Callable[[Sequence[str], bool | None, bool], list[StorageHealth]] = check_storages,
        health_pool: DiskPool | None = None,
        set_aside: Callable[[str, str, str], bool] | None = None,
        read_faults: ReadFaults | None = None,
        hedge_after: float | None = None,
    ) -> None:
        self.pairs = tuple(pairs)
        self.storages = tuple(s for pair in self.pairs for s in pair)
        self._twins = {a: b for pair in self.pairs for a, b in (pair, pair[::-1])}
        self._servers = {s: layout.server_name(s) for s in self.storages}
        self._pool = pool
        self._writable = writable_regex
        self._threshold = balance_threshold
        self._check_mounts = check_mounts
        self._rng = rng or random.Random()
        self._health = health
        self._health_pool = health_pool or pool  # its own threads: never behind uploads
        self._placement: tuple[float, list[StorageHealth]] | None = None
        self._set_aside = set_aside  # the prober's (stor.disk.health.Prober.set_aside)
        self.read_faults = read_faults or ReadFaults()
        """Where a failed read of a replica is told (:mod:`stor.disk.readfaults`)."""
        self.hedge_after = hedge_after
        """``read_hedge_after``: seconds before a stalled read's twin is asked too."""

    def run(self, f: Callable[..., T], *args: object) -> "Deferred[T]":
        """Run blocking ``f(*args)`` in the disk pool."""
        return self._pool.run(f, *args)

    def call_from_thread(self, f: Callable[..., object], *args: object) -> None:
        """From a pool thread: run ``f(*args)`` on the reactor."""
        call = getattr(self._pool, "call_from_thread", None)
        if call is None:  # a pool without threads (tests): we are on the caller's thread
            f(*args)
        else:
            call(f, *args)

    def twin(self, storage: str) -> str:
        """The other member of ``storage``'s pair."""
        return self._twins[storage]

    def server_name(self, storage: str) -> str:
        """``storage`` as a metric key segment (computed once)."""
        return self._servers.get(storage) or layout.server_name(storage)

    def pair_of(self, storage: str) -> Pair:
        """The pair ``storage`` belongs to, in configuration order."""
        return next(pair for pair in self.pairs if storage in pair)

    def writable(self, storage: str) -> bool:
        """Whether ``writable_pairs_regex`` lets ``storage`` take new files."""
        return placement.writable(storage, self._writable)

    def lookup_order(self) -> list[str]:
        """A fresh lookup order (docs/SPEC.md §2)."""
        return placement.lookup_order(self.pairs, self._rng)

    # -- reads (reactor side) -------------------------------------------

    def find(self, sha: str, head: bool, exclude: Collection[str] = ()
             ) -> "Deferred[Hit | Unreadable | None]":
        """Find (and for a GET open) ``sha`` in lookup order, skipping ``exclude``."""
        order = [s for s in self.lookup_order() if s not in exclude]
        return self._open(order, sha, head)

    def find_at(self, path: str, sha: str, head: bool) -> "Deferred[Hit | Unreadable | None]":
        """``sha`` at a path remembered from an earlier lookup (the cache's answer)."""
        storage = layout.storage_of(path, sha)
        if storage is None or storage not in self._twins:
            return succeed(None)
        return self._open([storage], sha, head, hedge_order=self.lookup_order())

    def find_at_nowait(self, path: str, sha: str, head: bool) -> "Hit | None | _Blocked":
        """:meth:`find_at` without waiting: the answer, or :data:`BLOCKED`."""
        storage = layout.storage_of(path, sha)
        if storage is None or storage not in self._twins:
            return None
        return open_nowait([storage], sha, head)

    def _open(self, order: list[str], sha: str, head: bool,
              hedge_order: Sequence[str] | None = None) -> "Deferred[Hit | Unreadable | None]":
        hit = open_nowait(order, sha, head)
        if isinstance(hit, _Blocked):
            return self.open_hedged(order, sha, head, hedge_order)
        return succeed(hit)

    def open_hedged(self, order: Sequence[str], sha: str, head: bool,
                    hedge_order: Sequence[str] | None = None
                    ) -> "Deferred[Hit | Unreadable | None]":
        """:func:`open_first_blocking` in the pool; when it has not answered after
        :attr:`hedge_after` seconds, a lookup in ``hedge_order`` (default ``order``)
        without the storage it is stuck on runs beside it, and the first to find the
        file answers (the other's file is closed when it comes).  The stall is a
        read fault of the answer."""
        call_later = getattr(self._pool, "call_later", None)
        others = list(hedge_order if hedge_order is not None else order)
        if self.hedge_after is None or call_later is None or len(set(others) | set(order)) < 2:
            return self.run(open_first_blocking, order, sha, head)
        return _Race(self, list(order), others, sha, head, self.hedge_after, call_later).result

    def twin_path(self, path: str, sha: str) -> str | None:
        """The path of ``sha`` on the twin of the storage ``path`` is on."""
        storage = layout.storage_of(path, sha)
        if storage is None or storage not in self._twins:
            return None
        return layout.file_path(self._twins[storage], sha)

    def health(self, with_free: bool = True) -> "Deferred[list[StorageHealth]]":
        """Every storage's health, measured now in the pool (``/status``, metrics)."""
        return self._health_pool.run(self.health_blocking, with_free)

    def not_ready(self, health: list[StorageHealth]) -> list[str]:
        """Why this host should not get traffic (empty: ready).  Ready means every
        pair has a usable member (reads) and some pair that ``writable_pairs_regex``
        lets take files is usable on both members (uploads)."""
        usable = {h.path for h in health if h.ok or h.placeable}
        reasons = [f"pair {a} {b}: no usable member" for a, b in self.pairs
                   if a not in usable and b not in usable]
        if not any(a in usable and b in usable and self.writable(a) and self.writable(b)
                   for a, b in self.pairs):
            reasons.append("no writable pair has both members usable")
        why = {h.path: h.problem for h in health}
        return reasons + [f"{s}: {why[s]}" for s in self.storages if why.get(s) and reasons]

    # -- blocking (pool threads) -----------------------------------------

    def health_blocking(self, with_free: bool = True) -> list[StorageHealth]:
        """Blocking :meth:`health`, with each storage's read faults.  A storage that takes
        files and whose ``statvfs`` fails is set aside: logged once, and probed every second
        until it passes."""
        found = [replace(h, read_faults=self.read_faults.of(h.path))
                 for h in self._health(self.storages, self._check_mounts, with_free)]
        for h in found:
            if h.statfs_failed and h.problem is not None and self.writable(h.path):
                self.set_aside(h.path, h.problem, "statfs")
        return found

    def existing_blocking(self, sha: str) -> Existing:
        """Blocking: the replicas of ``sha`` a 200 duplicate may name, and the pairs
        holding it whole: verified (hashed) and durable (:mod:`stor.disk.duplicate`).

        A file counts as stored (a duplicate) only when both members of a pair
        hold its exact bytes; a lone replica is waiting for repair, not a promise kept.
        """
        return verified_existing(self.lookup_order(), self.pairs, sha)

    def set_aside(self, storage: str, why: str, kind: str = "upload") -> None:
        """An upload failed on ``storage`` (``why``), or its ``statvfs`` did (``kind``
        ``statfs``): no new files go there until its probe passes (checked every second:
        :data:`stor.disk.health.RECHECK_PERIOD`); logged once when it was up.  Without a
        prober (tests), nothing happens.  Never waits (a lock): from the reactor or a
        pool thread."""
        self._placement = None  # no small upload placed from before this
        if self._set_aside is not None and self._set_aside(storage, why, kind):
            self.call_from_thread(_set_aside_logged, storage, why, kind)

    def unhealthy_writable_blocking(self) -> list[str] | None:
        """Blocking: when no pair ``writable_pairs_regex`` lets take files is healthy on
        both members, why (``<storage>: <problem>`` each); None when one is."""
        health = {h.path: h for h in self.health_blocking()}  # with statfs: it can fail
        reasons: list[str] = []
        for pair in self.pairs:
            if not (self.writable(pair[0]) and self.writable(pair[1])):
                continue
            bad = [f"{s}: {health[s].problem or 'takes no files'}" for s in pair
                   if not health[s].placeable]
            if not bad:
                return None
            reasons += bad
        return reasons or None

    def capacity_blocking(self) -> int:
        """Blocking: the most bytes any writable, placeable pair could hold were it
        empty (the smaller member's filesystem size): a declared length above it
        can be refused before its body."""
        placeable = {h.path for h in self.health_blocking(with_free=False) if h.placeable}
        sizes = [min(_size_of(a), _size_of(b)) for a, b in self.pairs
                 if {a, b} <= placeable and self.writable(a) and self.writable(b)]
        return max(sizes, default=0)

    def choose_pair_cached_blocking(self, size: int) -> Pair:
        """:meth:`choose_pair_blocking` from a health answer at most
        :data:`PLACEMENT_TTL` seconds old (the small-upload path: no ``statvfs`` and
        ``stat`` of every storage per upload).  A stale answer costs nothing worse
        than a pair that refuses its temps, after which the caller calls
        :meth:`forget_placement` and chooses afresh; a storage set aside forgets it
        too, and while one is out the answer is not reused."""
        now = time.monotonic()
        cached = self._placement
        # while a storage is out, every upload asks afresh: its return counts at once
        if cached is None or now - cached[0] > PLACEMENT_TTL or not all(
                h.placeable for h in cached[1]):
            cached = self._placement = (now, self.health_blocking())
        return self._choose(cached[1], size, ())

    def forget_placement(self) -> None:
        """The cached health placed a file where it could not go: ask afresh next time."""
        self._placement = None

    def choose_pair_blocking(self, size: int, exclude: Collection[Pair] = ()) -> Pair:
        """Blocking: the pair a new file of ``size`` bytes goes to; NoSpace if none.

        A member that is unhealthy (missing, not a directory, unmounted: see
        :mod:`stor.disk.health`) or not writable counts as having no room.
        """
        health = self.health_blocking()
        self._placement = (time.monotonic(), health)
        return self._choose(health, size, exclude)

    def _choose(self, health: list[StorageHealth], size: int, exclude: Collection[Pair]
                ) -> Pair:
        room = {h.path: (h.free_bytes or 0) if h.placeable and self.writable(h.path) else 0
                for h in health}
        candidates = [(pair, (room[pair[0]], room[pair[1]]))
                      for pair in self.pairs if pair not in exclude]
        return placement.choose_pair(candidates, size, self._rng, self._threshold)


def _set_aside_logged(storage: str, why: str, kind: str) -> None:
    _log.warn("storage {storage} is down: {problem} ({kind}); it gets no new files until its "
              "probe passes", storage=storage, problem=why, kind=kind)


def _size_of(storage: str) -> int:
    try:
        st = os.statvfs(storage)
    except OSError:
        return 0
    return st.f_blocks * st.f_frsize


class _Race:
    """A lookup and, once it has stalled past ``hedge_after``, a second one without the
    storage it is stuck on: the first hit answers (see :meth:`LocalStore.open_hedged`)."""

    def __init__(self, local: LocalStore, order: list[str], others: list[str], sha: str,
                 head: bool, hedge_after: float, call_later: Callable[..., object]) -> None:
        self.result: Deferred[Hit | Unreadable | None] = Deferred()
        self._local = local
        self._others = others
        self._sha = sha
        self._head = head
        self._hedge_after = hedge_after
        self._pending = 0
        self._errors: list[tuple[str, OSError]] = []
        self._faults: list[ReadFault] = []
        self._progress: list[Progress] = []
        self._hedged = False
        self._start(order)
        self._timer = call_later(hedge_after, self._hedge)

    def _start(self, order: list[str]) -> None:
        progress = Progress()
        self._progress.append(progress)
        self._pending += 1
        d = self._local.run(open_first_blocking, order, self._sha, self._head, progress)
        d.addCallbacks(self._finished, self._failed)

    def _hedge(self) -> None:
        if self.result.called or self._hedged:
            return
        self._hedged = True
        stuck = self._progress[0].storage
        if stuck is None:
            return  # not even started: the pool is busy, not the disk
        path = layout.file_path(stuck, self._sha)
        self._faults.append(ReadFault(stuck, path, "stall",
                                      f"no answer after {self._hedge_after:g} s"))
        rest = [s for s in self._others if s != stuck]
        if rest:
            log.info("reading {sha} from {storage} stalls past {seconds:g} s: trying {rest}",
                     sha=self._sha, storage=stuck, seconds=self._hedge_after, rest=rest)
            self._start(rest)

    def _finished(self, outcome: "Hit | Unreadable | None") -> None:
        self._pending -= 1
        if self.result.called:
            if isinstance(outcome, Hit):
                outcome.close()  # the other attempt answered first
            return
        if isinstance(outcome, Hit):
            for progress in self._progress:
                progress.abandoned = True
            self._cancel_timer()
            faults = tuple(self._faults) + outcome.faults
            self.result.callback(replace(outcome, faults=faults) if faults else outcome)
            return
        if isinstance(outcome, Unreadable):
            self._errors += outcome.errors
            self._faults += outcome.faults
        if self._pending == 0:
            self._cancel_timer()
            self.result.callback(Unreadable(tuple(self._errors), tuple(self._faults))
                                 if self._errors else None)

    def _failed(self, failure: Failure) -> None:
        self._pending -= 1
        if not self.result.called:
            self._cancel_timer()
            self.result.errback(failure)

    def _cancel_timer(self) -> None:
        cancel = getattr(self._timer, "cancel", None)
        active = getattr(self._timer, "active", None)
        if cancel is not None and (active is None or active()):
            cancel()
