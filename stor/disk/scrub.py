"""``stor scrub``: check (and with ``--repair`` mend) every replica on the storages.

Uploads write both members of a pair, but disks rot, disks get replaced and
operators copy things by hand: only reading every byte tells whether each file
still hashes to its name and still has its twin.  Scrub is an offline-safe
operator tool: plain blocking Python, no reactor, safe next to a running
daemon (it only ever replaces a final path by an atomic rename of a verified
copy, the way uploads do) and throttled with ``--max-mbps`` so it does not
starve live reads.  It never deletes a ``.dat``.

Problem kinds:

``corrupt``        a ``.dat`` that does not hash to its name (or cannot be read);
                   moved to quarantine and repaired from a verified twin
``unrecoverable``  a corrupt ``.dat`` with no good twin; left alone
``missing-twin``   the other member of the pair lacks the file (the path
                   reported is the missing one); repaired by copying a verified replica
``misplaced``      a ``.dat`` whose name is not a SHA or which is not at its
                   SHA's path (stor would never find it); left alone
``stale-temp``     an abandoned upload in ``.stor-tmp`` (no process holds it: see
                   :mod:`stor.disk.temps`); removed by ``--repair``
``unreadable``     a directory below a storage that cannot be listed
``symlink``        a symbolic link below a storage (stor never makes one):
                   never followed, read or written through; left alone

Every walk, read, write, rename and unlink below a storage goes through
directory descriptors opened with ``O_NOFOLLOW | O_DIRECTORY`` from the
storage down (:mod:`stor.disk.anchored`): what the daemon's user planted
cannot make a root scrub touch anything outside the storage.

This module is the engine: it knows storages and replicas, not terminals.
:func:`count` is the quick first pass (``stat`` only) that gives a long scrub
its totals; :class:`Scrubber` hashes and mends, telling a :class:`ProgressSink`
how far it got.  The command, its progress display, its report and its
metrics are :mod:`stor.cli.scrub`.
"""

import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from stor.core import layout
from stor.core.sha import parse_sha
from stor.config import Config
from stor.core.errors import HashMismatch, MalformedSha
from stor.disk import anchored
from stor.disk.anchored import SymlinkRefused
from stor.disk.locks import ShaLocks
from stor.disk.temps import is_stale_temp, temp_dir
from stor.disk.quarantine import quarantine
from stor.disk.replica import CHUNK, copy_to_twin, sha256_fd

KINDS = ("corrupt", "unrecoverable", "missing-twin", "misplaced", "stale-temp", "unreadable",
         "symlink")
"""Every problem kind, in report order."""

SKIPPED_TOP_DIRS = layout.OWN_DIRS | {"lost+found"}
"""Top-level directories that hold no stor data (temp files are checked separately)."""

EXIT_CLEAN, EXIT_PROBLEMS = 0, 1


@dataclass
class Problem:
    """One thing wrong on a storage, and whether scrub fixed it."""

    path: str
    kind: str
    repaired: bool = False
    detail: str = ""


@dataclass
class Report:
    """What a scrub found; ``bytes`` counts the ``.dat`` bytes hashed in the walk.

    ``seconds`` is the walk (hashing and mending); ``count_seconds`` the
    first pass that only counted (0 when there was none).
    """

    storages: list[str]
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    count_seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    def remaining(self) -> list[Problem]:
        """Problems still there after the run (all of them without ``--repair``)."""
        return [p for p in self.problems if not p.repaired]

    def counts(self) -> dict[str, int]:
        """Problems found, by kind (every kind present, zeros included)."""
        return {k: sum(p.kind == k for p in self.problems) for k in KINDS}

    def repaired_counts(self) -> dict[str, int]:
        """Problems repaired, by kind."""
        return {k: sum(p.kind == k and p.repaired for p in self.problems) for k in KINDS}

    def exit_code(self) -> int:
        """0 when no problem remains (none found, or all repaired), else 1."""
        return EXIT_PROBLEMS if self.remaining() else EXIT_CLEAN

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document."""
        return {
            "ok": not self.remaining(),
            "storages": self.storages,
            "files": self.files,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "count_seconds": round(self.count_seconds, 3),
            "counts": self.counts(),
            "repaired": self.repaired_counts(),
            "remaining": len(self.remaining()),
            "problems": [asdict(p) for p in self.problems],
        }


class Throttle:
    """A token bucket on bytes read: at most ``rate`` bytes per second on average.

    The bucket starts empty and holds at most ``burst`` bytes, so even the
    first megabyte is paced and an idle spell (a directory walk) buys at most
    one chunk of catch-up.  Reads may overdraw it; the debt is slept off.
    """

    def __init__(
        self,
        rate: float | None,
        burst: int = CHUNK,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self._burst = burst
        self._clock, self._sleep = clock, sleep
        self._tokens = 0.0
        self._last = clock()

    def consume(self, n: int) -> None:
        """Account for ``n`` bytes just read; sleep if that overdrew the bucket."""
        if not self.rate:
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self.rate) - n
        self._last = now
        if self._tokens < 0:
            self._sleep(-self._tokens / self.rate)


class ProgressSink(Protocol):
    """Told of every file checked and every byte hashed (a display, a log line)."""

    def add_file(self) -> None: ...

    def add_bytes(self, n: int) -> None: ...


class _NoProgress:
    def add_file(self) -> None:
        pass

    def add_bytes(self, n: int) -> None:
        pass


@dataclass(frozen=True)
class Totals:
    """What the first pass found to hash: well-placed ``.dat`` files and their bytes."""

    files: int
    bytes: int


def count(storages: Sequence[str], on_file: Callable[[int], None] = lambda size: None
          ) -> Totals:
    """The files and bytes a scrub of ``storages`` will hash, by ``stat`` alone.

    The same walk as the scrub (same skipped directories, misplaced files
    left out), reading no file: on a disk it costs a directory read per
    directory and an inode read per file, against reading every byte.
    ``on_file`` gets each file's size as it is counted.  Unreadable
    directories and vanished files are skipped here; the scrub reports them.
    """
    files = size_total = 0
    for storage in storages:
        for found in walk(storage, on_error=lambda e: None):
            if found.sha is None:
                continue
            try:
                size = os.stat(found.name, dir_fd=found.dir_fd, follow_symlinks=False).st_size
            except OSError:
                continue
            files += 1
            size_total += size
            on_file(size)
    return Totals(files, size_total)


@dataclass(frozen=True)
class Found:
    """A ``.dat`` the walk found: its path, its SHA (None if misplaced), and its
    directory's descriptor and its name there (valid until the walk moves on)."""

    path: str
    sha: str | None
    dir_fd: int
    name: str


def walk(storage: str, on_error: Callable[[OSError], None],
         on_symlink: Callable[[str], None] = lambda path: None) -> Iterator[Found]:
    """Every ``.dat`` below ``storage`` in a stable order, through descriptors.

    Directories are opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to their
    parent's descriptor: a symlink anywhere is told to ``on_symlink`` and
    neither followed nor yielded."""
    try:
        root = anchored.open_storage(storage)
    except OSError as e:
        on_error(e)
        return
    try:
        yield from _walk_dir(storage, root, storage, True, on_error, on_symlink)
    finally:
        os.close(root)


def _walk_dir(storage: str, fd: int, path: str, top: bool, on_error: Callable[[OSError], None],
              on_symlink: Callable[[str], None]) -> Iterator[Found]:
    try:
        with os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        e.filename = path
        on_error(e)
        return
    dirs: list[str] = []
    for entry in entries:
        full = os.path.join(path, entry.name)
        try:
            if entry.is_symlink():
                on_symlink(full)
            elif entry.is_dir(follow_symlinks=False):
                if not (top and entry.name in SKIPPED_TOP_DIRS):
                    dirs.append(entry.name)
            elif entry.name.lower().endswith(".dat"):  # anything else is none of scrub's business
                yield Found(full, _placed_sha(storage, full), fd, entry.name)
        except FileNotFoundError:
            continue  # removed while we walked
    for name in dirs:
        full = os.path.join(path, name)
        try:
            sub = anchored.open_dir_at(fd, name, full)
        except SymlinkRefused:
            on_symlink(full)  # replaced by a link while we walked
            continue
        except FileNotFoundError:
            continue
        except OSError as e:
            on_error(e)
            continue
        try:
            yield from _walk_dir(storage, sub, full, False, on_error, on_symlink)
        finally:
            os.close(sub)


class Scrubber:
    """Walks storages, checking each ``.dat`` against its name and its twin.

    ``twins`` maps every configured storage to the other member of its pair.
    Problems are appended to ``report`` and passed to ``on_problem`` as found,
    so a long scrub shows them at once.
    """

    def __init__(
        self,
        twins: dict[str, str],
        report: Report,
        locks: ShaLocks,
        repair: bool = False,
        throttle: Throttle | None = None,
        progress: ProgressSink | None = None,
        on_problem: Callable[[Problem], None] = lambda p: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.twins = twins
        self.report = report
        self.locks = locks
        self.repair = repair
        self.throttle = throttle or Throttle(None)
        self.progress: ProgressSink = progress or _NoProgress()
        self.on_problem = on_problem
        self._clock = clock
        self._links: set[str] = set()

    def run(self, storages: Sequence[str]) -> Report:
        """Scrub every one of ``storages`` in turn; the report, with the time it took."""
        start = self._clock()
        for storage in storages:
            self.scrub(storage)
        self.report.seconds = self._clock() - start
        return self.report

    def scrub(self, storage: str) -> None:
        """Check ``storage``'s temp directory, then every file below it."""
        self.check_temps(storage)
        for found in self._walk(storage):
            self.check_file(storage, found)

    # -- temp files -----------------------------------------------------

    def check_temps(self, storage: str) -> None:
        """Report (and with repair remove) stale files in ``storage``'s temp directory.

        Listed and removed through its descriptor: a ``.stor-tmp`` that is a
        symlink is reported (by the walk) and its target never swept."""
        now = time.time()
        try:
            chain = anchored.open_chain(storage, temp_dir(storage))
        except (FileNotFoundError, SymlinkRefused):
            return  # nothing to sweep; a link is the walk's to report
        except OSError as e:
            self._found(Problem(temp_dir(storage), "unreadable", detail=_reason(e)))
            return
        with chain:
            try:
                with os.scandir(chain.leaf) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self._found(Problem(chain.path, "unreadable", detail=_reason(e)))
                return
            for entry in entries:
                path = os.path.join(chain.path, entry.name)
                if entry.is_symlink():
                    self._symlink(path)
                elif entry.is_file(follow_symlinks=False) and self._is_stale(
                        chain.leaf, entry.name, now):
                    problem = Problem(path, "stale-temp")
                    self._mend(problem, lambda: os.unlink(entry.name, dir_fd=chain.leaf))
                    self._found(problem)

    def _is_stale(self, dir_fd: int, name: str, now: float) -> bool:
        """The daemon's sweeper rule, so both agree on what is abandoned."""
        return is_stale_temp(name, now, dir_fd)

    # -- data files -----------------------------------------------------

    def _walk(self, storage: str) -> Iterator[Found]:
        """Yield every well-placed ``.dat``; report misplaced ones and symlinks."""
        def unreadable(e: OSError) -> None:
            self._found(Problem(e.filename or storage, "unreadable", detail=_reason(e)))

        for found in walk(storage, on_error=unreadable, on_symlink=self._symlink):
            if found.sha is None:
                self._found(Problem(found.path, "misplaced",
                                    detail=_misplaced_reason(storage, found.path)))
            else:
                yield found

    def check_file(self, storage: str, found: Found) -> None:
        """Hash one replica; then mend it from its twin, or mend its twin from it."""
        path, sha = found.path, found.sha
        assert sha is not None
        try:
            fd = anchored.open_file_at(found.dir_fd, found.name, os.O_RDONLY, path)
        except FileNotFoundError:
            return  # removed while we walked: nothing to check
        except SymlinkRefused:
            self._symlink(path)  # replaced by a link while we walked
            return
        except OSError as e:
            actual = None
            detail = f"cannot be read: {_reason(e)}"
        else:
            try:
                actual = sha256_fd(fd, self._hashed)
                detail = f"hashes to {actual}"
            except OSError as e:
                actual = None
                detail = f"cannot be read: {_reason(e)}"
            finally:
                os.close(fd)
        self.report.files += 1
        self.progress.add_file()
        if actual == sha:
            self._check_twin(path, self.twins[storage], sha)
        else:
            self._corrupt(storage, path, sha, detail)

    def _hashed(self, n: int) -> None:
        self.report.bytes += n
        self.progress.add_bytes(n)
        self.throttle.consume(n)

    def _check_twin(self, path: str, twin: str, sha: str) -> None:
        """A good replica: make sure the other member of the pair has one too."""
        twin_path = layout.file_path(twin, sha)
        try:
            st = anchored.lstat(twin, twin_path)
        except SymlinkRefused as e:
            self._symlink(str(e.filename))  # a directory on the way is a link: not written
            return
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            self._symlink(twin_path)
            return
        if st is not None and stat.S_ISREG(st.st_mode):
            return  # its content is checked when (if) the twin storage is walked
        problem = Problem(twin_path, "missing-twin", detail=f"present at {path}")
        self._mend(problem, lambda: self._copy(path, twin, sha))
        self._found(problem)

    def _corrupt(self, storage: str, path: str, sha: str, detail: str) -> None:
        """A bad replica: replace it from the twin, but only from a verified one."""
        twin = self.twins[storage]
        twin_path = layout.file_path(twin, sha)
        twin_state = self._twin_state(twin, twin_path)
        if twin_state != "good":
            self._found(Problem(path, "unrecoverable", detail=f"{detail}; twin {twin_state}"))
            return
        problem = Problem(path, "corrupt", detail=f"{detail}; good twin at {twin_path}")
        self._mend(problem, lambda: self._replace(storage, path, twin_path, sha))
        self._found(problem)

    def _replace(self, storage: str, path: str, twin_path: str, sha: str) -> None:
        """Move the corrupt replica to quarantine, then copy the verified twin back."""
        st = anchored.lstat(storage, path)
        quarantine(storage, sha, (st.st_dev, st.st_ino), self.locks)
        self._copy(twin_path, storage, sha)

    def _twin_state(self, twin: str, twin_path: str) -> str:
        """'good', or why the twin cannot be the source of a repair."""
        sha = os.path.basename(twin_path)[:-4].lower()
        try:
            with anchored.opened_file(twin, twin_path) as fd:
                actual = sha256_fd(fd, self.throttle.consume)
        except (FileNotFoundError, NotADirectoryError):
            return f"{twin_path} is missing"
        except SymlinkRefused as e:
            return f"{e.filename} is a symbolic link (not followed)"
        except OSError as e:
            return f"{twin_path} is unreadable ({_reason(e)})"
        return "good" if actual == sha else f"{twin_path} is corrupt too"

    def _copy(self, source: str, storage: str, sha: str) -> None:
        copy_to_twin(source, storage, sha, self.locks, on_chunk=self.throttle.consume)

    def _symlink(self, path: str) -> None:
        """A link below a storage: reported once, never followed."""
        if path in self._links:
            return
        self._links.add(path)
        try:
            target = os.readlink(path)  # the link itself, not what it points at
        except OSError:
            target = "?"
        self._found(Problem(path, "symlink", detail=f"a symbolic link to {target}; "
                                                      "not followed, left alone"))

    # -- bookkeeping ----------------------------------------------------

    def _mend(self, problem: Problem, fix: Callable[[], object]) -> None:
        """Run ``fix`` when repairing; a failed fix is recorded, never fatal."""
        if not self.repair:
            return
        try:
            fix()
        except (OSError, HashMismatch) as e:
            problem.detail += f"; repair failed: {_reason(e)}"
            return
        problem.repaired = True

    def _found(self, problem: Problem) -> None:
        self.report.problems.append(problem)
        self.on_problem(problem)


def _placed_sha(storage: str, path: str) -> str | None:
    """The SHA named by ``path`` when it is exactly where stor looks for it, else None."""
    stem = os.path.basename(path)[:-4]
    try:
        sha = parse_sha(stem)
    except MalformedSha:
        return None
    return sha if os.path.relpath(path, storage) == layout.relative_path(sha) else None


def _misplaced_reason(storage: str, path: str) -> str:
    stem = os.path.basename(path)[:-4]
    try:
        sha = parse_sha(stem)
    except MalformedSha:
        return "name is not a sha256"
    return f"belongs at {layout.file_path(storage, sha)}"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e)


def twins(config: Config) -> dict[str, str]:
    """Every configured storage → the other member of its pair."""
    found: dict[str, str] = {}
    for a, b in config.storage_pairs:
        found[a], found[b] = b, a
    return found
