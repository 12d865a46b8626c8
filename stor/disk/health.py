"""Whether a storage directory can serve and take files (docs/SPEC.md §2, §9).

A storage is unhealthy when it is missing, is not a directory, cannot be
read, or is *on the root filesystem*: its ``st_dev`` equals that of ``/``
(storages may sit below a mount point, so ``os.path.ismount`` is not the
test).  A disk that failed to mount leaves an empty directory on ``/``;
writing to it would fill the root filesystem.

``check_mounts`` has three settings: ``True`` (the root test counts for
``/status`` and placement), ``False`` (never checked), and ``None`` — absent
from the config, as in every file the old service ran on: ``/status`` reports
a storage on ``/`` as the old service did, and placement skips it only when
some other configured storage is on a filesystem of its own (one disk failed
to mount); when every storage is on ``/``, as in test setups, placement
behaves as the old service.  A storage ``check_mounts`` judges unmounted
reports no free bytes (the figure would be the root filesystem's).

**Health is writability where stor writes** (:class:`Prober`): that a
directory exists and is mounted says nothing of whether the daemon's user can
write it (``chmod 000``, a wrong owner), of free inodes, or of a filesystem
remounted read-only.  A periodic probe, as the daemon's user, creates,
writes, fsyncs and removes a file in stor's own temp directory of every
storage that ``writable_pairs_regex`` lets take files (after checking
``statvfs`` for a read-only mount and free inodes), and lists every other
storage (read probe: it is never written).  Its verdict fails the storage
for ``/status``, readiness, ``stor_storage_up`` and placement, and each change
of a storage's state is logged once.  Everything here blocks.
"""

import os
import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any
from dataclasses import dataclass, replace

from twisted.application.internet import TimerService
from twisted.logger import Logger

from stor.core import layout
from stor.disk.readfaults import StorageReadFaults

_log = Logger()

ON_ROOT = "is on the / filesystem (not a mounted disk)"


@dataclass(frozen=True)
class StorageHealth:
    """One storage, as seen now."""

    path: str
    problem: str | None
    """Why ``/status`` fails it (None: healthy)."""
    placeable: bool
    """Whether new files may go to it (before ``writable_pairs_regex``)."""
    free_bytes: int | None
    """``statvfs`` bytes available to stor; None when it cannot be read or is not the disk's."""
    size_bytes: int | None = None
    """``statvfs`` total bytes of its filesystem (for "% full"); None when not read."""
    probe: "Verdict | None" = None
    """The latest probe's verdict (None: not probed yet)."""
    statfs_failed: bool = False
    """``statvfs`` failed now (``problem`` says how): the storage is set aside."""
    read_faults: StorageReadFaults | None = None
    """Replicas that failed to read here since the start (:mod:`stor.disk.readfaults`)."""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def read_faults_json(self) -> dict[str, object] | None:
        """The read faults as ``/status`` JSON shows them (None: none)."""
        return self.read_faults.as_json() if self.read_faults is not None else None

    def probe_json(self) -> dict[str, object] | None:
        """The probe's verdict as ``/status`` JSON shows it (``writable`` stays the regex rule)."""
        if self.probe is None:
            return None
        return {"kind": self.probe.kind, "ok": self.probe.problem is None,
                "reason": self.probe.problem, "seconds_ago": round(time.time() - self.probe.at, 1)}


@dataclass(frozen=True)
class Verdict:
    """One probe of one storage."""

    kind: str
    """``write`` or ``read`` (a probe); or ``upload`` or ``statfs``: an upload failed on
    it, or a health check's ``statvfs`` did (:meth:`Prober.set_aside`), and no probe has
    passed since."""
    problem: str | None
    at: float
    """``time.time()`` when it was made."""
    aside: bool = False
    """Made by :meth:`Prober.set_aside`, not by a probe."""


def free_bytes(storage: str) -> int | None:
    """Bytes available to stor on ``storage``'s filesystem; None when unreadable."""
    return space(storage)[0]


def space(storage: str) -> tuple[int | None, int | None]:
    """(bytes available to stor, total bytes) of ``storage``'s filesystem, from one
    ``statvfs``; (None, None) when unreadable."""
    return statfs(storage)[:2]


def statfs(storage: str) -> tuple[int | None, int | None, str | None]:
    """:func:`space`, and why ``statvfs`` failed (None when it did not)."""
    try:
        st = os.statvfs(storage)
    except OSError as e:
        return None, None, statfs_problem(e)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, None


def statfs_problem(error: OSError) -> str:
    """A failing ``statvfs``, as a storage's problem: stor cannot tell its free space, so
    it cannot place files there (issue 18, case 13)."""
    return f"statfs failed: {error.strerror or error}"


def _basic_problem(storage: str) -> tuple[str | None, int | None]:
    """(why it cannot serve at all, its st_dev)."""
    try:
        st = os.stat(storage)
    except FileNotFoundError:
        return "does not exist", None
    except OSError as e:
        return f"cannot be read: {e.strerror}", None
    if not os.path.isdir(storage):
        return "is not a directory", None
    return None, st.st_dev


def check_storages(storages: Sequence[str], check_mounts: bool | None,
                   with_free: bool = True) -> list[StorageHealth]:
    """The health of every storage, in order (see the module docstring for the rules)."""
    root_dev = os.stat("/").st_dev
    basics = [(s, *_basic_problem(s)) for s in storages]
    some_mounted = any(dev is not None and dev != root_dev for _, _, dev in basics)
    found = []
    for storage, problem, dev in basics:
        on_root = dev == root_dev
        if on_root and check_mounts is not False:
            problem = ON_ROOT
        placeable = _placeable(dev, on_root, check_mounts, some_mounted)
        unmounted = on_root and (check_mounts is True or (check_mounts is None and some_mounted))
        free: int | None = None
        size: int | None = None
        failed: str | None = None
        if with_free and dev is not None and not unmounted:
            free, size, failed = statfs(storage)
            if failed is not None:  # no free space known: no new files, and /status says why
                problem, placeable = problem or failed, False
        found.append(StorageHealth(storage, problem, placeable, free, size,
                                   statfs_failed=failed is not None))
    return found


def _placeable(dev: int | None, on_root: bool, check_mounts: bool | None,
               some_mounted: bool) -> bool:
    if dev is None:
        return False  # missing, not a directory, unreadable
    if not on_root or check_mounts is False:
        return True
    return check_mounts is None and not some_mounted


# -- the probe ---------------------------------------------------------------------------------

STALLED_AFTER = 30.0
"""Seconds a probe may take before its storage counts as failing (a hung disk)."""

RECHECK_PERIOD = 1.0
"""Seconds between two probes of a storage an upload set aside (:meth:`Prober.set_aside`),
until one passes: it comes back soon after its fault clears, whatever ``probe_period``."""


def write_probe(storage: str) -> str | None:
    """Why stor cannot write ``storage`` now (None: it can): a read-only mount, no free
    inodes, or a file that cannot be created, written, fsynced and removed in its temp dir."""
    try:
        st = os.statvfs(storage)
    except OSError as e:
        return statfs_problem(e)
    if st.f_flag & os.ST_RDONLY:
        return "is mounted read-only"
    if st.f_files and not st.f_favail:
        return "has no free inodes"
    directory = os.path.join(storage, layout.TEMP_DIR)
    name = os.path.join(directory, f".probe.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        try:
            os.mkdir(directory, 0o755)
        except FileExistsError:
            pass
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.write(fd, b"stor write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        return f"cannot be written: {e.strerror}"
    return None


def read_probe(storage: str) -> str | None:
    """Why stor cannot read ``storage`` now (None: it can list it)."""
    try:
        with os.scandir(storage) as entries:
            next(entries, None)
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    return None


class Prober:
    """The latest probe of every storage, and the health check that takes it into account.

    :meth:`run` (blocking; the health pool, periodically) probes each storage
    and returns the changes of state; :meth:`check` is :func:`check_storages`
    with each storage's verdict folded in (a failed or stalled probe fails
    it and takes it out of placement).
    """

    def __init__(self, storages: Sequence[str], writable: Callable[[str], bool],
                 probes: tuple[Callable[[str], str | None], Callable[[str], str | None]]
                 = (write_probe, read_probe)) -> None:
        self._storages = tuple(storages)
        self._writable = writable
        self._write, self._read = probes
        self._verdicts: dict[str, Verdict] = {}
        self._started: dict[str, float] = {}
        self._aside: set[str] = set()
        self._lock = threading.Lock()

    def run(self, only: Collection[str] | None = None) -> list[tuple[str, Verdict]]:
        """Probe every storage (or those in ``only``) now; the (storage, verdict) of each
        whose state changed."""
        changed = []
        for storage in self._storages:
            if only is not None and storage not in only:
                continue
            if not os.path.isdir(storage):
                continue  # missing: the basic check fails it, and the start-up check says so
            writable = self._writable(storage)
            began = time.time()
            with self._lock:
                self._started[storage] = time.monotonic()
            problem = (self._write if writable else self._read)(storage)
            verdict = Verdict("write" if writable else "read", problem, time.time())
            with self._lock:
                self._started.pop(storage, None)
                before = self._verdicts.get(storage)
                if before is not None and before.aside and before.at >= began:
                    continue  # set aside while this probe ran: the next one decides
                self._verdicts[storage] = verdict
                if problem is None:
                    self._aside.discard(storage)
            if (before.problem if before else None) != problem and not (
                    before is not None and before.aside and problem is not None):
                changed.append((storage, verdict))  # (still down since set aside: logged)
        return changed

    def set_aside(self, storage: str, problem: str, kind: str = "upload") -> bool:
        """An upload failed on ``storage`` (a write, an fsync, a rename), or its ``statvfs``
        did (``kind``): it fails health and placement now, and is probed every
        :data:`RECHECK_PERIOD` until a probe passes.  Thread-safe; True when it was
        healthy until now (a change to log; a failing verdict is kept as it is)."""
        with self._lock:
            self._aside.add(storage)
            before = self._verdicts.get(storage)
            if before is not None and before.problem is not None:
                return False
            self._verdicts[storage] = Verdict(kind, problem, time.time(), aside=True)
        return True

    def aside(self) -> list[str]:
        """The storages an upload set aside that no probe has passed since."""
        with self._lock:
            return sorted(self._aside)

    def verdict(self, storage: str) -> Verdict | None:
        """The latest verdict, or a failing one when a probe has been running too long."""
        with self._lock:
            started = self._started.get(storage)
            verdict = self._verdicts.get(storage)
        if started is not None and time.monotonic() - started > STALLED_AFTER:
            kind = verdict.kind if verdict else "write"
            return Verdict(kind, f"its probe has not finished for {STALLED_AFTER:g} s", time.time())
        return verdict

    def check(self, storages: Sequence[str], check_mounts: bool | None,
              with_free: bool = True) -> list[StorageHealth]:
        """:func:`check_storages`, each storage with its probe's verdict."""
        found = []
        for h in check_storages(storages, check_mounts, with_free):
            verdict = self.verdict(h.path)
            if verdict is not None and verdict.problem is not None:
                h = replace(h, problem=h.problem or verdict.problem, placeable=False)
            found.append(replace(h, probe=verdict))
        return found


class ProbeService(TimerService):
    """Runs the :class:`Prober` every ``period`` seconds (from start) in ``run`` (the health
    pool), one run at a time, and logs each change of a storage's state once.  Between
    two runs, the storages an upload set aside are probed every :data:`RECHECK_PERIOD`."""

    def __init__(self, prober: Prober, run: Callable[..., Any], period: float) -> None:
        tick = min(period, RECHECK_PERIOD)
        super().__init__(tick, self._probe)  # type: ignore[no-untyped-call]  # TimerService: unannotated
        self._prober = prober
        self._run = run
        self._period = period - tick / 2  # the tick that comes at ``period`` runs them all
        self._last_full: float | None = None
        self._busy = False

    def _probe(self) -> Any:
        if self._busy:
            return None  # the last run is still waiting on a disk: the verdict says stalled
        now = time.monotonic()
        only: list[str] | None = None
        if self._last_full is not None and now - self._last_full < self._period:
            only = self._prober.aside()
            if not only:
                return None
        else:
            self._last_full = now
        self._busy = True
        d = self._run(self._prober.run, only)
        d.addCallback(self._report)
        d.addErrback(lambda f: _log.failure("storage probe failed", failure=f))
        d.addBoth(self._idle)
        return None  # never hold the timer (nor the service's stop) behind a hung disk

    def _idle(self, result: object) -> object:
        self._busy = False
        return result

    @staticmethod
    def _report(changes: list[tuple[str, Verdict]]) -> None:
        for storage, verdict in changes:
            if verdict.problem is not None:
                _log.warn("storage {storage} is down: {problem} ({kind} probe); it gets no new "
                          "files until it passes", storage=storage, problem=verdict.problem,
                          kind=verdict.kind)
            else:
                _log.info("storage {storage} is up again ({kind} probe passed)",
                          storage=storage, kind=verdict.kind)
