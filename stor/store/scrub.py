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
                   :mod:`stor.fs.temps`); removed by ``--repair``
``unreadable``     a directory below a storage that cannot be listed
"""

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TextIO

from stor.core import layout
from stor.core.sha import parse_sha
from stor.config import Config, load_config
from stor.core.errors import ConfigError, HashMismatch, MalformedSha
from stor.fs.health import check_storages
from stor.fs.locks import ShaLocks, default_lock_dir
from stor.fs.temps import is_stale_temp, temp_dir
from stor.store.quarantine import quarantine
from stor.store.replica import CHUNK, copy_to_twin, sha256_file

KINDS = ("corrupt", "unrecoverable", "missing-twin", "misplaced", "stale-temp", "unreadable")
"""Every problem kind, in report order."""

SKIPPED_TOP_DIRS = layout.OWN_DIRS | {"lost+found"}
"""Top-level directories that hold no stor data (temp files are checked separately)."""

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


@dataclass
class Problem:
    """One thing wrong on a storage, and whether scrub fixed it."""

    path: str
    kind: str
    repaired: bool = False
    detail: str = ""


@dataclass
class Report:
    """What a scrub found; ``bytes`` counts the ``.dat`` bytes hashed in the walk."""

    storages: list[str]
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
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


class Progress:
    """A one-line progress display on a terminal; does nothing when disabled."""

    def __init__(
        self,
        stream: TextIO,
        enabled: bool,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.2,
    ) -> None:
        self.files = 0
        self.bytes = 0
        self._stream, self._enabled = stream, enabled
        self._clock, self._interval = clock, interval
        self._start = clock()
        self._shown_at = float("-inf")
        self._dirty = False

    def add_file(self) -> None:
        """One more file checked."""
        self.files += 1
        self._maybe_show()

    def add_bytes(self, n: int) -> None:
        """``n`` more bytes hashed."""
        self.bytes += n
        self._maybe_show()

    def clear(self) -> None:
        """Erase the line, so other output starts on a clean line."""
        if self._enabled and self._dirty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._dirty = False
            self._shown_at = float("-inf")

    def _maybe_show(self) -> None:
        if not self._enabled:
            return
        now = self._clock()
        if now - self._shown_at < self._interval:
            return
        self._shown_at = now
        rate = self.bytes / max(now - self._start, 1e-9) / 1e6
        self._stream.write(
            f"\r\x1b[Kscrub: {self.files} files, {_megabytes(self.bytes)}, {rate:.1f} MB/s"
        )
        self._stream.flush()
        self._dirty = True


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
        progress: Progress | None = None,
        on_problem: Callable[[Problem], None] = lambda p: None,
    ) -> None:
        self.twins = twins
        self.report = report
        self.locks = locks
        self.repair = repair
        self.throttle = throttle or Throttle(None)
        self.progress = progress or Progress(sys.stderr, enabled=False)
        self.on_problem = on_problem

    def scrub(self, storage: str) -> None:
        """Check ``storage``'s temp directory, then every file below it."""
        self.check_temps(storage)
        for path, sha in self._walk(storage):
            self.check_file(storage, path, sha)

    # -- temp files -----------------------------------------------------

    def check_temps(self, storage: str) -> None:
        """Report (and with repair remove) stale files in ``storage``'s temp directory."""
        now = time.time()
        try:
            entries = sorted(os.scandir(temp_dir(storage)), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as e:
            self._found(Problem(temp_dir(storage), "unreadable", detail=_reason(e)))
            return
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and self._is_stale(entry, now):
                problem = Problem(entry.path, "stale-temp")
                self._mend(problem, lambda: os.unlink(entry.path))
                self._found(problem)

    def _is_stale(self, entry: os.DirEntry[str], now: float) -> bool:
        """The daemon's sweeper rule, so both agree on what is abandoned."""
        return is_stale_temp(entry.path, now)

    # -- data files -----------------------------------------------------

    def _walk(self, storage: str) -> Iterator[tuple[str, str]]:
        """Yield (path, sha) for every well-placed ``.dat``; report misplaced ones."""
        def unreadable(e: OSError) -> None:
            self._found(Problem(e.filename or storage, "unreadable", detail=_reason(e)))

        for directory, dirs, files in os.walk(storage, onerror=unreadable):
            if directory == storage:
                dirs[:] = [d for d in dirs if d not in SKIPPED_TOP_DIRS]
            dirs.sort()
            for name in sorted(files):
                if not name.lower().endswith(".dat"):
                    continue  # not stor's: none of scrub's business
                path = os.path.join(directory, name)
                sha = _placed_sha(storage, path)
                if sha is None:
                    self._found(Problem(path, "misplaced", detail=_misplaced_reason(storage, path)))
                else:
                    yield path, sha

    def check_file(self, storage: str, path: str, sha: str) -> None:
        """Hash one replica; then mend it from its twin, or mend its twin from it."""
        try:
            actual = sha256_file(path, self._hashed)
        except FileNotFoundError:
            return  # removed while we walked: nothing to check
        except OSError as e:
            actual = None
            detail = f"cannot be read: {_reason(e)}"
        else:
            detail = f"hashes to {actual}"
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
        if os.path.isfile(twin_path):
            return  # its content is checked when (if) the twin storage is walked
        problem = Problem(twin_path, "missing-twin", detail=f"present at {path}")
        self._mend(problem, lambda: self._copy(path, twin, sha))
        self._found(problem)

    def _corrupt(self, storage: str, path: str, sha: str, detail: str) -> None:
        """A bad replica: replace it from the twin, but only from a verified one."""
        twin_path = layout.file_path(self.twins[storage], sha)
        twin_state = self._twin_state(twin_path, sha)
        if twin_state != "good":
            self._found(Problem(path, "unrecoverable", detail=f"{detail}; twin {twin_state}"))
            return
        problem = Problem(path, "corrupt", detail=f"{detail}; good twin at {twin_path}")
        self._mend(problem, lambda: self._replace(storage, path, twin_path, sha))
        self._found(problem)

    def _replace(self, storage: str, path: str, twin_path: str, sha: str) -> None:
        """Move the corrupt replica to quarantine, then copy the verified twin back."""
        st = os.stat(path)
        quarantine(storage, sha, (st.st_dev, st.st_ino), self.locks)
        self._copy(twin_path, storage, sha)

    def _twin_state(self, twin_path: str, sha: str) -> str:
        """'good', or why the twin cannot be the source of a repair."""
        try:
            actual = sha256_file(twin_path, self.throttle.consume)
        except FileNotFoundError:
            return f"{twin_path} is missing"
        except OSError as e:
            return f"{twin_path} is unreadable ({_reason(e)})"
        return "good" if actual == sha else f"{twin_path} is corrupt too"

    def _copy(self, source: str, storage: str, sha: str) -> None:
        copy_to_twin(source, storage, sha, self.locks, on_chunk=self.throttle.consume)

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


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- the command -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``stor scrub``'s options on its subparser."""
    parser.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
    parser.add_argument("--repair", action="store_true",
                        help="replace corrupt replicas and create missing twins from verified "
                             "copies; remove stale temp files")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--max-mbps", type=_positive_rate, metavar="N",
                        help="read at most N megabytes (10^6 bytes) per second")
    parser.add_argument("storages", nargs="*", metavar="STORAGE",
                        help="only these storages (default: every configured one)")


def _positive_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of MB/s, got {text}")
    return value


class UsageError(Exception):
    """The command cannot run: exit 2 with this message."""


def run_command(args: argparse.Namespace, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """``stor scrub``: returns the exit status (0 clean, 1 problems remain, 2 error)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        config = _load(args.config or os.environ.get("CONFIG_FILE"))
        storages = _selected(config, args.storages)
        _check_readable(storages)
    except UsageError as e:
        err.write(f"stor scrub: {e}\n")
        return EXIT_ERROR
    report = scrub(config, storages, args, err, None if args.json else out)
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_summary(report, args.repair, out)
    return report.exit_code()


def scrub(config: Config, storages: Sequence[str], args: argparse.Namespace,
          err: TextIO, lines: TextIO | None) -> Report:
    """Scrub ``storages`` with the command's options; problem lines go to ``lines``."""
    report = Report(list(storages))
    progress = Progress(err, enabled=_is_terminal(err))

    def show(problem: Problem) -> None:
        if lines is not None:
            progress.clear()
            lines.write(_problem_line(problem) + "\n")
            lines.flush()

    scrubber = Scrubber(
        twins=_twins(config), report=report, locks=ShaLocks(config.lock_dir or default_lock_dir()),
        repair=args.repair,
        throttle=Throttle(args.max_mbps * 1e6 if args.max_mbps else None),
        progress=progress, on_problem=show,
    )
    start = time.monotonic()
    for storage in storages:
        scrubber.scrub(storage)
    report.seconds = time.monotonic() - start
    progress.clear()
    return report


def _load(path: str | None) -> Config:
    if not path:
        raise UsageError("no config file: give --config FILE or set CONFIG_FILE")
    try:
        return load_config(path)
    except ConfigError as e:
        raise UsageError(f"config error: {e}") from e


def _selected(config: Config, named: Sequence[str]) -> list[str]:
    """The storages to walk, spelled as in the config; every name must be one of them."""
    if not named:
        return list(config.storages)
    by_real = {os.path.realpath(s): s for s in config.storages}
    chosen: list[str] = []
    for name in named:
        storage = by_real.get(os.path.realpath(name))
        if storage is None:
            raise UsageError(f"{name} is not a storage in the config "
                             f"(storages: {', '.join(config.storages)})")
        if storage not in chosen:
            chosen.append(storage)
    return chosen


def _check_readable(storages: Sequence[str]) -> None:
    """Refuse to start on a storage that cannot be listed: a dead disk is an error,
    not a disk full of missing files.  Name the healthy storages to scrub around it."""
    for health in check_storages(storages, check_mounts=False, with_free=False):
        storage, why = health.path, health.problem
        if why is None:
            try:
                with os.scandir(storage):
                    pass
            except OSError as e:
                why = f"cannot be listed: {e.strerror}"
        if why is not None:
            raise UsageError(f"storage {storage} {why}")


def _twins(config: Config) -> dict[str, str]:
    twins: dict[str, str] = {}
    for a, b in config.storage_pairs:
        twins[a], twins[b] = b, a
    return twins


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _problem_line(problem: Problem) -> str:
    state = "repaired" if problem.repaired else "NOT repaired"
    return f"{problem.kind:<14} {problem.path}  [{state}] {problem.detail}".rstrip()


def _print_summary(report: Report, repair: bool, out: TextIO) -> None:
    rate = report.bytes / max(report.seconds, 1e-9) / 1e6
    out.write(f"stor scrub: {report.files} files, {_megabytes(report.bytes)} checked on "
              f"{len(report.storages)} storage(s) in {report.seconds:.1f} s ({rate:.1f} MB/s)\n")
    counts, repaired = report.counts(), report.repaired_counts()
    found = [f"{counts[k]} {k}" + (f" ({repaired[k]} repaired)" if repair else "")
             for k in KINDS if counts[k]]
    if not found:
        out.write("stor scrub: no problems found\n")
        return
    out.write(f"stor scrub: found {', '.join(found)}\n")
    left = len(report.remaining())
    if left == 0:
        out.write("stor scrub: every problem was repaired\n")
    else:
        hint = "" if repair else " (--repair mends corrupt, missing-twin and stale-temp)"
        out.write(f"stor scrub: {left} problem(s) remain{hint}\n")
