"""The durable outbox of the S3 write-through: files stored here that S3 still lacks.

Before an upload is answered 201, :func:`record` leaves an empty marker file
``<storage>/.stor-outbox/<sha>`` on both members of the pair the file was
committed to, fsynced with its directory.  The marker is removed only once
the bucket has the object (or the file is gone from every local storage), so
a crash, a restart or an S3 outage of any length loses no pending upload.

:class:`Outbox` drains the markers: at start (every storage's outbox is
scanned, markers are deduplicated by SHA), for each file the running process
records (:meth:`Outbox.queue`), and on a periodic rescan (markers a crashed
``--workers`` sibling left behind).  For each SHA it HEADs the bucket (an
object already there is not sent again), otherwise puts the file from a local
replica (:class:`~stor.s3.put.S3Writer`, verified end to end; a rotten
replica is reported through ``on_corrupt`` and its twin used).

While S3 fails, the whole drain backs off exponentially (with jitter, up to
``s3_outbox_max_backoff`` seconds) instead of each SHA hammering a store that
is down; the first success resets it.  At most ``s3_outbox_concurrency``
uploads run at once.  Several processes may drain the same directories: a
process owns a SHA while it holds an ``flock`` on its first marker, and the
others leave that SHA alone.  An object put twice (two hosts, or a race) is
harmless: the key names the content.

Every disk access runs on the disk pool, never on the reactor.
"""

import errno
import fcntl
import os
import random
import re
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.config import Config
from stor.core import layout
from stor.core.reactor import Reactor
from stor.disk.fsio import durable_dirs, fsync_dir
from stor.s3.put import CorruptLocalFile, Runner, S3WriteError, S3Writer
from stor.core.metrics import Metrics, NullMetrics

log = Logger()

OUTBOX_DIR = ".stor-outbox"
MIN_BACKOFF = 0.5  # seconds before the first retry after a failure
RESCAN_INTERVAL = 300.0  # seconds between scans for markers no process has queued
STOP_TIMEOUT = 10.0  # seconds a stop waits for uploads in flight before cutting them
CLAIM_ATTEMPTS = 3
GAUGE_INTERVAL = 10.0  # seconds between s3.outbox.depth gauges

DEPTH = "s3.outbox.depth"
PUT_OK = "s3.put.ok"
PUT_ERROR = "s3.put.error"
PUT_TIME = "s3.put.time"
PUT_PRESENT = "s3.put.present"
PUT_CORRUPT = "s3.put.corrupt"
DROPPED = "s3.outbox.dropped"

_SHA = re.compile(r"[0-9a-f]{64}")


class Writer(Protocol):
    """What the outbox needs of :class:`~stor.s3.put.S3Writer`."""

    def exists(self, sha: str) -> "Deferred[bool]": ...

    def put_file(self, sha: str, path: str) -> "Deferred[int]": ...


# -- markers on disk (blocking) -------------------------------------------------


def outbox_dir(storage: str) -> str:
    return os.path.join(storage, OUTBOX_DIR)


def marker_path(storage: str, sha: str) -> str:
    return os.path.join(outbox_dir(storage), sha.lower())


def record(sha: str, storages: Sequence[str]) -> list[str]:
    """Blocking: make ``sha``'s upload to S3 durable, before the upload's 201.

    Call it with the members of the pair the file was just committed to.  All
    markers are created first, then each outbox directory is fsynced: a
    marker is empty, so its inode and its directory entry are one journal
    transaction, which the directory's fsync commits; with both created
    before either fsync, storages on one filesystem share that commit
    (separate file and directory fsyncs, storage after storage, cost four
    commits and a fifth of a 4 MiB upload's time).  A storage whose marker
    cannot be written is logged and skipped; ``OSError`` only if none could be.
    Returns the markers written.
    """
    created: list[str] = []
    error: OSError | None = None
    for storage in storages:
        try:
            _create_marker(storage, sha.lower())
            created.append(storage)
        except OSError as e:
            error = _not_recorded(sha, storage, e)
    written: list[str] = []
    for storage in created:
        try:
            fsync_dir(outbox_dir(storage))
            written.append(marker_path(storage, sha))
        except OSError as e:
            error = _not_recorded(sha, storage, e)
    if not written and error is not None:
        raise error
    return written


def _create_marker(storage: str, sha: str) -> None:
    directory = outbox_dir(storage)
    durable_dirs(storage, directory)  # also when another process made it and has not fsynced yet
    os.close(os.open(os.path.join(directory, sha), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC,
                     0o644))


def _not_recorded(sha: str, storage: str, error: OSError) -> OSError:
    log.warn("S3 outbox marker for {sha} not written on {storage}: {why}",
             sha=sha, storage=storage, why=error)
    return error


def scan(storages: Sequence[str]) -> dict[str, float]:
    """Blocking: every SHA with a marker on any of ``storages``, with its oldest mtime."""
    found: dict[str, float] = {}
    for storage in storages:
        try:
            entries = list(os.scandir(outbox_dir(storage)))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warn("S3 outbox of {storage} cannot be listed: {why}", storage=storage, why=e)
            continue
        for entry in entries:
            if not _SHA.fullmatch(entry.name):
                continue
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:
                continue  # drained meanwhile
            found[entry.name] = min(mtime, found.get(entry.name, mtime))
    return found


@dataclass
class Claim:
    """This process owns ``sha`` while ``fd`` (its first marker, flocked) is open."""

    sha: str
    fd: int


BUSY = "busy"  # another process holds the SHA


def claim(sha: str, storages: Sequence[str]) -> "Claim | str | None":
    """Blocking: lock ``sha``'s first marker (in ``storages`` order).

    None when no marker is left (someone has drained it), :data:`BUSY` when
    another process holds it.  A marker unlinked between open and lock (its
    owner just finished) is skipped and the next one tried.
    """
    for _ in range(CLAIM_ATTEMPTS):
        fd = _open_first_marker(sha, storages)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return BUSY
            raise
        if os.fstat(fd).st_nlink > 0:
            return Claim(sha, fd)
        os.close(fd)
    return BUSY


def _open_first_marker(sha: str, storages: Sequence[str]) -> int | None:
    for storage in storages:
        try:
            return os.open(marker_path(storage, sha), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warn("S3 outbox marker {path} cannot be opened: {why}",
                     path=marker_path(storage, sha), why=e)
    return None


def local_copies(sha: str, storages: Sequence[str]) -> list[str]:
    """Blocking: the paths of ``sha``'s file, storages with a marker first."""
    marked = [s for s in storages if os.path.exists(marker_path(s, sha))]
    order = marked + [s for s in storages if s not in marked]
    return [p for p in (layout.file_path(s, sha) for s in order) if os.path.isfile(p)]


STORED, GONE = "stored", "gone"


def release(owned: Claim, storages: Sequence[str], outcome: str | None) -> bool:
    """Blocking: drop the lock, first removing every marker of the SHA when the
    ``outcome`` allows: :data:`STORED` (the bucket has it), :data:`GONE` (no
    local copy to upload, and still none now: one stored again since is kept).
    Returns whether the markers were removed."""
    try:
        if outcome is None or (outcome == GONE and local_copies(owned.sha, storages)):
            return False
        for storage in storages:
            _remove_marker(storage, owned.sha)
        return True
    finally:
        os.close(owned.fd)


def forget(sha: str, storages: Sequence[str]) -> None:
    """Blocking: remove ``sha``'s markers (its file is being deleted), first waiting
    for an upload of it in flight in any process, so that the object is not put
    to S3 after the deletion removed it there."""
    fd = _open_first_marker(sha, storages)
    if fd is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # an upload holds it until it is done
            for storage in storages:
                _remove_marker(storage, sha)
        finally:
            os.close(fd)


def _remove_marker(storage: str, sha: str) -> None:
    """Unlink a marker; its directory is not fsynced: a removal lost to a power cut
    brings the marker back, and the next drain finds the object present in S3 (or
    the file gone) and removes it again, at the cost of one request."""
    try:
        os.unlink(marker_path(storage, sha))
    except FileNotFoundError:
        return
    except OSError as e:  # left for the next scan, which will find the object present
        log.warn("S3 outbox marker {path} not removed: {why}", path=marker_path(storage, sha),
                 why=e)


# -- the drain ------------------------------------------------------------------


class LocalFailure(Exception):
    """No local replica of the SHA could be read whole and right; tried again later."""


class Outbox(Service):
    """Drains the markers of ``storages`` into S3; see the module docstring."""

    def __init__(self, storages: Sequence[str], writer: Writer, reactor: Reactor, run: Runner,
                 metrics: Metrics | None = None, concurrency: int = 4,
                 max_backoff: float = 30.0, min_backoff: float = MIN_BACKOFF,
                 rescan_interval: float = RESCAN_INTERVAL, stop_timeout: float = STOP_TIMEOUT,
                 gauge_interval: float = GAUGE_INTERVAL,
                 on_corrupt: Callable[[str], object] = lambda path: None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._storages = tuple(storages)
        self._writer = writer
        self._reactor = reactor
        self._run = run
        self._metrics = metrics or NullMetrics()
        self._concurrency = concurrency
        self._max_backoff = max_backoff
        self._min_backoff = min(min_backoff, max_backoff)
        self._rescan_interval = rescan_interval
        self._stop_timeout = stop_timeout
        self._on_corrupt = on_corrupt
        self._rng = rng or random.Random()
        self._clock = clock
        self._pending: dict[str, float] = {}  # sha -> when recorded
        self._queue: deque[str] = deque()
        self._active: dict[str, Deferred[bool]] = {}
        self._again: set[str] = set()  # queued while in flight: go round once more
        self._later: dict[str, IDelayedCall] = {}  # SHAs waiting after a local failure
        self._failures = 0  # consecutive S3 failures
        self._paused_until: IDelayedCall | None = None
        self._rescan: LoopingCall | None = None
        self._gauge: LoopingCall | None = None
        self._gauge_interval = gauge_interval
        self._last_error: tuple[float, str] | None = None
        self._last_scan: float | None = None
        self._counts = {"ok": 0, "error": 0, "present": 0, "corrupt": 0, "dropped": 0}

    # -- the service ---------------------------------------------------------

    def startService(self) -> None:
        """Scan every outbox now (drained on start) and again every ``rescan_interval``."""
        super().startService()
        self._rescan = LoopingCall(self.rescan)
        self._rescan.clock = self._reactor
        self._rescan.start(self._rescan_interval, now=True)
        self._gauge = LoopingCall(self._send_depth)
        self._gauge.clock = self._reactor
        self._gauge.start(self._gauge_interval, now=True)

    def stopService(self) -> "Deferred[None]":
        """Start nothing new; wait up to ``stop_timeout`` for uploads in flight, then cut
        them (their markers stay for the next start)."""
        super().stopService()
        for loop in (self._rescan, self._gauge):
            if loop is not None and loop.running:
                loop.stop()
        for call in [self._paused_until, *self._later.values()]:
            if call is not None and call.active():
                call.cancel()
        self._paused_until = None
        self._later.clear()
        active = list(self._active.values())
        if not active:
            return succeed(None)
        waiting = DeferredList(active, consumeErrors=True)
        def cancel_all() -> None:
            for d in active:
                d.cancel()

        timer = self._reactor.callLater(self._stop_timeout, cancel_all)
        return waiting.addBoth(lambda _: timer.cancel() if timer.active() else None)

    # -- feeding it ----------------------------------------------------------

    def queue(self, sha: str, recorded_at: float | None = None) -> None:
        """Upload ``sha`` (its markers are on disk: :func:`record` has run)."""
        sha = sha.lower()
        if sha in self._pending:
            if sha in self._active:  # its markers may be removed by the upload in flight
                self._again.add(sha)
            return
        self._pending[sha] = recorded_at if recorded_at is not None else self._clock()
        self._queue.append(sha)
        self._pump()

    def rescan(self) -> "Deferred[None]":
        """Queue every marker on disk that is not queued yet."""
        d = self._run(scan, self._storages)
        d.addCallback(self._scanned)
        d.addErrback(lambda f: log.failure("S3 outbox scan failed", failure=f))
        return d

    def state(self) -> dict[str, Any]:
        """For ``/status`` JSON and Prometheus: the backlog and how the drain is going."""
        now = self._clock()
        oldest = min(self._pending.values(), default=None)
        error = None
        if self._last_error is not None:
            error = {"message": self._last_error[1], "age": round(now - self._last_error[0], 3)}
        return {
            "depth": len(self._pending),
            "scanned": self._last_scan is not None,  # False until the first scan is done
            "in_flight": len(self._active),
            "oldest_age": None if oldest is None else round(max(0.0, now - oldest), 3),
            "backing_off": self._paused_until is not None,
            "consecutive_failures": self._failures,
            "last_error": error,
            "puts": dict(self._counts),
        }

    # -- internals -----------------------------------------------------------

    def _scanned(self, found: dict[str, float]) -> None:
        self._last_scan = self._clock()
        for sha, mtime in sorted(found.items(), key=lambda item: item[1]):
            if self.running:
                self.queue(sha, mtime)

    def _pump(self) -> None:
        while (self.running and self._paused_until is None and self._queue
               and len(self._active) < self._concurrency):
            sha = self._queue.popleft()
            d = ensureDeferred(self._drain(sha))
            self._active[sha] = d
            d.addBoth(self._drained, sha)

    def _drained(self, result: "bool | Failure", sha: str) -> None:
        del self._active[sha]
        again = sha in self._again
        self._again.discard(sha)
        if isinstance(result, Failure):
            self._failed(sha, result)  # queued again, later
        elif again or not result:  # recorded anew meanwhile, or stored again since "gone"
            self._queue.append(sha)
        else:  # done, or another process owns it (a later scan finds it if that one dies)
            del self._pending[sha]
        self._pump()

    async def _drain(self, sha: str) -> bool:
        """Upload one SHA; False when its markers had to stay although it was not
        uploaded (its file came back after it was found gone)."""
        owned = await self._run(claim, sha, self._storages)
        if not isinstance(owned, Claim):
            return True  # drained by someone else, or theirs now
        outcome = None
        try:
            outcome = await self._upload(sha)
        finally:
            removed = await self._run(release, owned, self._storages, outcome)
        if outcome == GONE and removed:
            self._count("dropped", DROPPED)
            log.warn("S3 outbox: {sha} is on no local storage any more (deleted?); "
                     "not uploaded, marker removed", sha=sha)
        return removed

    async def _upload(self, sha: str) -> str:
        if await self._writer.exists(sha):
            self._count("present", PUT_PRESENT)
            self._succeeded()
            return STORED
        copies = await self._run(local_copies, sha, self._storages)
        if not copies:
            return GONE
        start = time.monotonic()
        await self._put_from(sha, copies)
        self._metrics.timing(PUT_TIME, (time.monotonic() - start) * 1000.0)
        self._count("ok", PUT_OK)
        self._succeeded()
        return STORED

    async def _put_from(self, sha: str, copies: list[str]) -> None:
        """Put the first replica that reads whole and right; report the rotten ones."""
        problems = []
        for path in copies:
            try:
                await self._writer.put_file(sha, path)
                return
            except CorruptLocalFile as e:
                self._count("corrupt", PUT_CORRUPT)
                log.error("S3 outbox: local replica {path} is corrupt, not uploaded: {why}",
                          path=path, why=e)
                problems.append(str(e))
                self._on_corrupt(path)
            except OSError as e:
                problems.append(f"{path}: {e.strerror or e}")
        raise LocalFailure(f"no good local replica of {sha}: " + "; ".join(problems))

    def _failed(self, sha: str, failure: Failure) -> None:
        """Keep the SHA (its markers stay on disk) and try again later."""
        error = failure.value
        self._metrics.incr(PUT_ERROR)
        self._counts["error"] += 1
        self._last_error = (self._clock(), f"{sha}: {error}")
        if not self.running:
            return  # cut by a stop: the markers are there for the next start
        if isinstance(error, S3WriteError):
            self._failures += 1
            delay = self._backoff()
            if error.retryable:
                log.warn("S3 outbox: {error}; retrying in {delay:.1f}s", error=error, delay=delay)
            else:
                log.error("S3 outbox: {error} (a refusal: check credentials, region, bucket "
                          "and policy); retrying in {delay:.1f}s", error=error, delay=delay)
            self._queue.append(sha)
            self._pause(delay)
        else:  # a local problem: this SHA waits, the others go on
            if not isinstance(error, LocalFailure):
                log.failure("S3 outbox: uploading {sha} failed", failure=failure, sha=sha)
            else:
                log.warn("S3 outbox: {error}; retrying in {delay:.0f}s", error=error,
                         delay=self._max_backoff)
            self._later[sha] = self._reactor.callLater(self._max_backoff, self._retry, sha)

    def _retry(self, sha: str) -> None:
        self._later.pop(sha, None)
        self._queue.append(sha)
        self._pump()

    def _backoff(self) -> float:
        ceiling = min(self._max_backoff, self._min_backoff * 2 ** min(self._failures - 1, 30))
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _pause(self, delay: float) -> None:
        if self._paused_until is not None and self._paused_until.active():
            self._paused_until.reset(delay)
            return
        self._paused_until = self._reactor.callLater(delay, self._resume)

    def _resume(self) -> None:
        self._paused_until = None
        self._pump()

    def _succeeded(self) -> None:
        self._failures = 0

    def _count(self, name: str, key: str) -> None:
        self._counts[name] += 1
        self._metrics.incr(key)

    def _send_depth(self) -> None:
        self._metrics.gauge(DEPTH, len(self._pending))


def build_outbox(config: Config, reactor: Reactor, run: Runner, metrics: Metrics,
                 on_corrupt: Callable[[str], object] = lambda path: None) -> Outbox | None:
    """The outbox the config asks for (``s3_write_through``), or None."""
    from stor.s3.read import s3_client  # the read path's client: same pool settings

    if config.s3 is None or not config.s3.write_through:
        return None
    writer = S3Writer(config.s3, s3_client(config.s3, reactor), reactor, run)
    return Outbox(config.storages, writer, reactor, run, metrics,
                  concurrency=config.s3.outbox_concurrency,
                  max_backoff=config.s3.outbox_max_backoff, on_corrupt=on_corrupt)
