"""``stor s3-sync``: push every locally stored file the bucket lacks.

The backfill for write-through (files stored before it was switched on, or
whose outbox marker was lost with a disk): walk the storages, HEAD each SHA,
and put the missing ones with the same verified upload as the outbox
(:class:`~stor.s3.put.S3Writer`: signed with the file's SHA-256, hashed
while read, a rotten replica never sent; its twin is tried instead).

It only reads the storages and only adds objects named by their content, so
it is idempotent and safe while the daemon runs (a file both push is put
twice, harmlessly).  A second run pushes nothing.  Twins are not HEADed
twice: a file on the second member of a pair is skipped when the first
member (also being walked) has it.

Exit status: 0 when every file seen is in S3 (with ``--dry-run``: none is
missing), 1 when some are not, 2 for a usage or config error.
"""

import argparse
import os
import re
import stat
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, TextIO

from twisted.internet import defer, task
from twisted.logger import Logger

from stor.cli.usage import (
    UsageError, check_listable, command_config, positive_rate, selected_storages,
)
from stor.cli.owner import OwnerError, act_as_storage_owner
from stor.config import Config
from stor.core import layout
from stor.core.reactor import Reactor
from stor.disk import anchored
from stor.disk.diskpool import DiskPool
from stor.s3.read import s3_client
from stor.s3.put import CorruptLocalFile, S3WriteError, S3Writer
from stor.disk.scrub import Throttle

log = Logger()

EXIT_OK, EXIT_MISSING, EXIT_ERROR = 0, 1, 2
PROBE_SHA = "0" * 64
"""The key asked before the walk: any answer but an error means the bucket answers."""
STOP_AFTER = 8
"""S3 failures in a row (each after the writer's own retries) that stop a run."""
BATCH = 256  # files listed per trip to the disk pool
LOG_INTERVAL = 30.0  # seconds between progress lines when stderr is not a terminal
_DAT = re.compile(r"[0-9A-Fa-f]{64}\.dat")

Item = tuple["str | None", str]
"""(sha, path) of a file, or (None, message) for a directory that cannot be read."""


def add_command(subparsers: Any) -> None:
    """Register ``stor s3-sync`` on the ``stor`` command's subparsers."""
    p = subparsers.add_parser("s3-sync", help="upload every local file the S3 bucket lacks")
    p.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
    p.add_argument("--dry-run", action="store_true",
                   help="only HEAD the bucket and list what is missing; upload nothing")
    p.add_argument("--max-mbps", type=positive_rate, metavar="N",
                   help="read local files at most N megabytes (10^6 bytes) per second")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="requests in flight (default: s3_outbox_concurrency)")
    p.add_argument("storages", nargs="*", metavar="STORAGE",
                   help="only these storages (default: every configured one)")
    p.set_defaults(func=run_command)


def _positive_int(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 256, got {text}")
    return int(text)


@dataclass
class Summary:
    """What one run saw and did."""

    seen: int = 0
    present: int = 0
    pushed: int = 0
    pushed_bytes: int = 0
    missing: int = 0  # --dry-run: would be pushed
    failed: int = 0
    seconds: float = 0.0
    unreachable: str | None = None
    """Why the bucket could not be asked before the walk (nothing was done)."""
    stopped: str | None = None
    """Why the run stopped early (S3 failed every request for a while)."""

    def exit_code(self) -> int:
        return EXIT_OK if self.failed == 0 and self.missing == 0 else EXIT_MISSING


def run_command(args: argparse.Namespace, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """``stor s3-sync``: runs the reactor until done; returns the exit status."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        config = _load(args)
        storages = selected_storages(config, args.storages)
        act_as_storage_owner(config.storages)  # before anything below them is touched
        check_listable(storages)
    except OwnerError as e:
        err.write(f"stor s3-sync: {e}\n")
        return EXIT_ERROR
    except UsageError as e:
        err.write(f"stor s3-sync: {e}\n")
        return EXIT_ERROR
    summaries: list[Summary] = []

    async def main(reactor: Reactor) -> None:
        try:
            summaries.append(await sync(reactor, config, storages, args, out, err))
        except Exception:
            traceback.print_exc(file=err)

    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    if not summaries:
        err.write("stor s3-sync: stopped by an unexpected error (see above)\n")
        return EXIT_MISSING
    summary = summaries[0]
    if summary.unreachable is not None:
        err.write(f"stor s3-sync: {summary.unreachable}\n")
        return EXIT_ERROR
    _print_summary(summary, args.dry_run, out)
    if summary.stopped is not None:
        err.write(f"stor s3-sync: {summary.stopped}\n")
    return summary.exit_code()


async def sync(reactor: Reactor, config: Config, storages: Sequence[str], args: argparse.Namespace,
               out: TextIO, err: TextIO) -> Summary:
    """Walk ``storages`` and push what the bucket lacks; lines about problems go to ``out``."""
    assert config.s3 is not None
    pool = DiskPool(reactor, size=4, name="s3-sync")
    pool.start()
    try:
        writer = S3Writer(config.s3, s3_client(config.s3, reactor), reactor, pool.run)
        try:  # is the bucket there at all? one request, before a walk of every file
            await writer.exists(PROBE_SHA)
        except S3WriteError as e:
            return Summary(unreachable=f"the bucket {config.s3.bucket} at "
                                       f"{config.s3.endpoint} does not answer: {e}; "
                                       "nothing was done")
        pusher = _Pusher(writer, config, storages, args, out, err, pool)
        concurrency = args.concurrency or config.s3.outbox_concurrency
        start = time.monotonic()
        await defer.gatherResults([defer.ensureDeferred(pusher.worker())
                                   for _ in range(concurrency)], consumeErrors=True)
        pusher.summary.seconds = time.monotonic() - start
        pusher.progress.clear()
        return pusher.summary
    finally:
        pool.stop()


class _Pusher:
    """Workers pull files from one shared walk; each HEADs, then pushes if missing."""

    def __init__(self, writer: Any, config: Config, storages: Sequence[str],
                 args: argparse.Namespace, out: TextIO, err: TextIO, pool: DiskPool) -> None:
        self.summary = Summary()
        self._s3_failures = 0
        self.progress = _Progress(err, self.summary)
        self._writer = writer
        self._out = out
        self._dry_run = args.dry_run
        self._twins = _twins(config)
        self._run = pool.run
        self._files = _walk_all(storages, self._twins)
        self._batch: list[Item] = []
        self._listing: defer.Deferred[list[Item]] | None = None
        throttle = _SharedThrottle(args.max_mbps * 1e6 if args.max_mbps else None)
        self._pace = throttle.consume if args.max_mbps else None

    async def worker(self) -> None:
        while self.summary.stopped is None and (item := await self._next()) is not None:
            await self._one(*item)

    async def _next(self) -> Item | None:
        """The next (sha, path); the walk runs in the pool, one batch at a time."""
        while not self._batch:
            if self._listing is None:
                self._listing = self._run(lambda: list(islice(self._files, BATCH)))
                batch = await self._listing
                self._listing = None
                if not batch:
                    self._files = iter(())
                    return None
                self._batch = batch[::-1]
            else:
                await _after(self._listing)
        return self._batch.pop()

    async def _one(self, sha: str | None, path: str) -> None:
        if sha is None:  # a directory the walk could not read
            self.summary.failed += 1
            self._line(path)
            return
        self.summary.seen += 1
        try:
            if await self._writer.exists(sha):
                self.summary.present += 1
            elif self._dry_run:
                self.summary.missing += 1
                self._line(f"missing  {sha}  {path}")
            else:
                size = await self._push(sha, path)
                self.summary.pushed += 1
                self.summary.pushed_bytes += size
        except (S3WriteError, CorruptLocalFile, OSError) as e:
            self.summary.failed += 1
            self._line(f"failed   {sha}  {e}")
            self._s3_failed(e)
        else:
            self._s3_failures = 0
        self.progress.update()

    def _s3_failed(self, error: Exception) -> None:
        """Count S3's failures in a row: a bucket that stopped answering stops the run
        (one line, not one identical failure per file left)."""
        if not isinstance(error, S3WriteError):
            return  # a local file's problem says nothing about S3
        self._s3_failures += 1
        if self._s3_failures >= STOP_AFTER and self.summary.stopped is None:
            self.summary.stopped = (f"S3 failed {self._s3_failures} requests in a row "
                                    f"(last: {error}); stopped early, the rest not tried")

    async def _push(self, sha: str, path: str) -> int:
        """Put from ``path``; if that replica is rotten or unreadable, from its twin."""
        sources = [path]
        storage = _storage_of(path, sha)
        twin = self._twins.get(storage) if storage is not None else None
        if twin is not None:
            sources.append(layout.file_path(twin, sha))
        for i, source in enumerate(sources):
            try:
                return int(await self._writer.put_file(sha, source, self._pace))
            except (CorruptLocalFile, OSError) as e:
                if isinstance(e, CorruptLocalFile):
                    self._line(f"corrupt  {source}  (run stor scrub --repair)")
                if i == len(sources) - 1 or not await self._run(_is_stored, twin, sources[i + 1]):
                    raise
        raise AssertionError("not reached")

    def _line(self, text: str) -> None:
        self.progress.clear()
        self._out.write(text + "\n")
        self._out.flush()


def _after(d: "defer.Deferred[Any]") -> "defer.Deferred[None]":
    """Fires once ``d`` has, without taking its result from its other waiters."""
    waiter: defer.Deferred[None] = defer.Deferred()

    def passthrough(result: Any) -> Any:
        waiter.callback(None)
        return result

    d.addBoth(passthrough)
    return waiter


def _walk_all(storages: Sequence[str], twins: dict[str, str]) -> Iterator[Item]:
    """Blocking: (sha, path) of every well-placed file; a file whose twin's storage
    comes earlier in the walk and has it too is left to the twin."""
    order = {s: i for i, s in enumerate(storages)}
    for storage in storages:
        twin = twins.get(storage)
        earlier_twin = twin if twin in order and order[twin] < order[storage] else None
        for sha, path in _walk(storage):
            if (sha is not None and earlier_twin is not None
                    and os.path.isfile(layout.file_path(earlier_twin, sha))):
                continue
            yield sha, path


def _walk(storage: str) -> Iterator[Item]:
    """(sha, path) of each well-placed file; (None, message) for an unreadable directory."""
    problems: list[OSError] = []
    for directory, dirs, files in os.walk(storage, onerror=problems.append):
        while problems:
            e = problems.pop()
            yield None, f"unreadable {e.filename or storage}  {e.strerror or e}"
        if directory == storage:
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # .stor-tmp, .stor-outbox…
        dirs.sort()
        for name in sorted(files):
            if not _DAT.fullmatch(name):
                continue
            sha = name[:64].lower()
            path = os.path.join(directory, name)
            if os.path.relpath(path, storage) == layout.relative_path(sha):
                yield sha, path


def _is_stored(storage: str | None, path: str) -> bool:
    """Whether ``path`` below ``storage`` is a regular file, reached through no link."""
    try:
        return storage is not None and stat.S_ISREG(anchored.lstat(storage, path).st_mode)
    except (OSError, ValueError):
        return False


def _storage_of(path: str, sha: str) -> str | None:
    suffix = os.sep + layout.relative_path(sha)
    return path[:-len(suffix)] if path.endswith(suffix) else None


class _SharedThrottle:
    """:class:`~stor.scrub.Throttle` for several reading threads at once."""

    def __init__(self, rate: float | None) -> None:
        self._throttle = Throttle(rate)
        self._lock = threading.Lock()

    def consume(self, n: int) -> None:
        with self._lock:  # the sleep is inside: one global rate
            self._throttle.consume(n)


class _Progress:
    """A live line on a terminal; otherwise a plain line every ``LOG_INTERVAL`` seconds."""

    def __init__(self, stream: TextIO, summary: Summary) -> None:
        self._stream = stream
        self._summary = summary
        self._tty = _is_terminal(stream)
        self._interval = 0.2 if self._tty else LOG_INTERVAL
        self._shown_at = time.monotonic()
        self._dirty = False

    def update(self) -> None:
        now = time.monotonic()
        if now - self._shown_at < self._interval:
            return
        self._shown_at = now
        s = self._summary
        text = (f"s3-sync: {s.seen} files seen, {s.present} in S3, {s.pushed} pushed "
                f"({s.pushed_bytes / 1e6:.1f} MB), {s.missing + s.failed} not")
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
            self._dirty = True
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def clear(self) -> None:
        if self._dirty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._dirty = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _print_summary(s: Summary, dry_run: bool, out: TextIO) -> None:
    rate = s.pushed_bytes / max(s.seconds, 1e-9) / 1e6
    out.write(f"stor s3-sync: {s.seen} files seen, {s.present} already in S3, "
              f"{s.pushed} pushed ({s.pushed_bytes / 1e6:.1f} MB, {rate:.1f} MB/s), "
              f"{s.failed} failed, in {s.seconds:.1f} s\n")
    if dry_run:
        out.write(f"stor s3-sync: dry run: {s.missing} missing from S3, nothing pushed\n")
    elif s.failed == 0:
        out.write("stor s3-sync: every file is in S3\n")
    else:
        out.write(f"stor s3-sync: {s.failed} file(s) or directories not in S3 (see above); "
                  "run again to retry\n")


def _load(args: argparse.Namespace) -> Config:
    config = command_config(args)
    if config.s3 is None:
        raise UsageError("the config names no bucket: s3-sync needs s3_credentials, "
                         "with s3_write_through (or s3_enabled) true")
    return config


def _twins(config: Config) -> dict[str, str]:
    twins: dict[str, str] = {}
    for a, b in config.storage_pairs:
        twins[a], twins[b] = b, a
    return twins
