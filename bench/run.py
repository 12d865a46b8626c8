"""Benchmark stor against the ceilings it is meant to approach, in paired alternating rounds.

Usage (from the repository root; ``make bench`` installs what is missing)::

    .venv/bin/python bench/run.py [--rounds 5] [--rows get4k,post4m,...]
                                  [--rss-upload 4GiB] [--workers N] [--no-s3]

Every row is measured next to its ceiling, in the same round, back to back,
the one going first alternating from round to round; a row's figure is the
median of its per-round ratios (see ``rounds.py``).  The rows (issue 13, and
issue 12 for the write-through):

``get4k``      GET of warm 4 KiB files, req/s with wrk, stor (one process) vs
               ``twistd web --path`` serving the same files; goal >= 1.2.
``get256m``    GET of one cached 256 MiB file, MB/s, stor (verifying every
               byte) vs the slower of nginx ``sendfile on`` (1 worker) and one
               core's ``hashlib.sha256`` over the same file; goal >= 0.9.
``post4m``     POST of 4 MiB files one after another, MB/s, vs the durable
               two-replica ceiling (``ceilings.py``), the two taking turns
               file by file (``rows.InterleavedUploads``); goal >= 0.9.
``post256m``   the same for 256 MiB; goal >= 0.9.
``post4k``     4 KiB uploads from 8 concurrent clients, files/s, vs the same
``post64k``    durable protocol done by one Python loop (64 KiB likewise); the
               issue sets no goal for these, the ratio is reported.
``wt``         POST 4 MiB to a stor with ``s3_write_through`` on (moto as the
               S3) vs the same POST with it off: within 10 % (goal >= 0.9);
               the time each file takes to leave the outbox is printed too.

plus ``--workers N`` (GET 4 KiB against ``stor --workers N``, no goal) and
``--rss-upload SIZE`` (stor's peak RSS while receiving one upload of SIZE,
goal < 100 MB at 4 GiB; long, so opt-in).

Only the standard library is imported; servers run from the interpreter's
own venv (``<dir of sys.executable>/twistd``).  Exit status: 0 when every
measurement ran (a missed goal prints ``MISS``, a noisy row ``(noisy)``, not
an error), 1 when something failed to run, 2 when a required tool is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness import (BenchError, Server, Servers, StorBuild, busy_note, create_bucket,
                     current_build, guarded, human_size, make_storages, parse_size,
                     require_program, start_moto, start_nginx, start_stor, start_twistd_web,
                     stop_process, temp_workdir)
from load import read_status_kb
from rounds import Row, failed_row, raise_failures, run_rounds, summary, warn
from rows import (AlternatingChunks, CeilingStores, InterleavedUploads, KeepAliveSmallUploads,
                  PostSource, PostStats, SmallLoopStores, StorUploads, WrkSettings,
                  big_get_ceiling, big_get_measure, check_get, fmt_mb, make_big_file,
                  make_small_files, outbox_drain_waiter, rss_upload, stor_small_chunk,
                  threads_small_chunk, wrk_measure)
from trust_rows import bench_rows

ALL_ROWS = ("get4k", "get256m", "post4m", "post256m", "post4k", "post64k", "post4k1", "head4k",
            "head256m", "dup4k", "dup256m", "dup256me", "wt")
GOALS: dict[str, float | None] = {
    "get4k": 1.5, "get256m": 0.9, "post4m": 0.9, "post256m": 0.9, "post4k": 0.7,
    "post64k": 0.7, "post4k1": 0.8, "wt": 0.9,
    "head4k": None, "head256m": None, "dup4k": None, "dup256m": None, "dup256me": None}
RSS_GOAL_MB = 100
BUCKET = "stor-bench"
MIN_ROUNDS = 5
SMALL_CHUNKS = 4
"""Chunks a side of each many-client small-upload round (``rows.AlternatingChunks``)."""


@dataclass
class Run:
    """What every row of one run shares."""

    args: argparse.Namespace
    workdir: Path
    servers: Servers
    build: StorBuild
    pairs: list[tuple[Path, Path]]
    stor: Server
    wrk: WrkSettings | None


# --------------------------------------------------------------------------
# rows


def get_small_rows(run: Run) -> list[Row]:
    """GET 4 KiB: stor vs twistd web, and stor --workers N when asked."""
    shas, _ = make_small_files(run.pairs, run.workdir / "webroot")
    web = start_twistd_web(run.servers, run.build, run.workdir / "webroot")
    check_get(web, f"/{shas[0]}.dat", shas[0], 4096)
    check_get(run.stor, f"/{shas[0]}", shas[0], 4096)
    assert run.wrk is not None
    ceiling = wrk_measure(web, [f"/{sha}.dat" for sha in shas], run.wrk)
    stor_urls = [f"/{sha}" for sha in shas]
    rows = [Row("GET 4 KiB", "req/s", "stor", "twistd web", GOALS["get4k"],
                wrk_measure(run.stor, stor_urls, run.wrk), ceiling)]
    if run.args.workers:
        workers = start_stor(run.servers, run.build, run.pairs,
                             name=f"stor --workers {run.args.workers}",
                             workers=run.args.workers)
        rows.append(Row(f"GET 4 KiB, {run.args.workers} workers", "req/s",
                        f"stor -w{run.args.workers}", "twistd web", None,
                        wrk_measure(workers, stor_urls, run.wrk), ceiling))
    return rows


def get_big_row(run: Run) -> Row:
    """GET of one cached big file: stor vs min(nginx sendfile, sha256 on one core)."""
    size = run.args.big_size
    sha, copies = make_big_file(run.pairs[0], size)
    nginx = start_nginx(run.servers, run.pairs[0][0])
    nginx_path = "/" + str(copies[0].relative_to(run.pairs[0][0]))
    check_get(nginx, nginx_path, sha, size)  # also reads both copies into the page cache
    check_get(run.stor, f"/{sha}", sha, size)
    check_get(run.stor, f"/{sha}", sha, size)
    repeat = run.args.get_repeat
    return Row(f"GET {human_size(size)}", "MB/s", "stor", "ceiling", GOALS["get256m"],
               big_get_measure(run.stor, f"/{sha}", size, repeat),
               big_get_ceiling(nginx, nginx_path, copies[0], size, repeat))


def post_row(run: Run, key: str, size: int, count: int) -> Row:
    """POST ``count`` files of ``size``, one at a time: stor vs the durable ceiling."""
    source = PostSource(run.workdir / f"post-{size}.bin", size)
    stats = PostStats()
    both = InterleavedUploads(count, size, StorUploads(run.stor, source, stats),
                              CeilingStores(source, run.pairs[0]))
    row = Row(f"POST {human_size(size)}" + (f" x{count}" if count > 1 else ""), "MB/s",
              "stor", "ceiling", GOALS[key], both.subject, both.reference)

    def note_rss() -> None:
        row.notes[:] = [f"stor's peak RSS sampled during these uploads: "
                        f"{fmt_mb(stats.rss_peak_kb)}"]

    row.after_round = note_rss
    return row


def post_small_row(run: Run, key: str, size: int, clients: int) -> Row:
    """Small uploads, files/s: stor with N concurrent clients vs the durable protocol
    run by N threads of this process on the same storages (one client: one loop)."""
    count = run.args.small_count
    if clients == 1:  # file by file, taking turns: the disk's phases hit both sides alike
        both = InterleavedUploads(count, size, KeepAliveSmallUploads(run.stor, size),
                                  SmallLoopStores(size, run.pairs[0]), files_per_s=True)
        return Row(f"POST {human_size(size)}, 1 client", "files/s", "stor", "loop",
                   GOALS[key], both.subject, both.reference)
    chunked = AlternatingChunks(
        SMALL_CHUNKS, stor_small_chunk(run.stor, size, count // SMALL_CHUNKS, clients),
        threads_small_chunk(size, count // SMALL_CHUNKS, clients, run.pairs[0]),
        ("stor", f"{clients} threads"))
    return Row(f"POST {human_size(size)}, {clients} clients", "files/s", "stor",
               f"{clients} threads", GOALS[key], chunked.subject, chunked.reference)


def write_through_row(run: Run) -> Row:
    """POST 4 MiB with write-through on vs off; each file's outbox drain is timed."""
    moto = start_moto(run.servers, run.build.tool("python"))
    create_bucket(moto, BUCKET)
    endpoint = f"127.0.0.1:{moto.port}"
    with_s3 = start_stor(run.servers, run.build, run.pairs, name="stor write-through", extra={
        "s3_write_through": True, "s3_bucket": BUCKET,
        "s3_credentials": {"access_key": "bench", "secret_key": "bench", "host": endpoint},
    })
    size, count = run.args.post_size, run.args.wt_count
    source = PostSource(run.workdir / f"wt-{size}.bin", size)
    stats = PostStats()
    drained = outbox_drain_waiter(moto, BUCKET, size)
    both = InterleavedUploads(count, size, StorUploads(with_s3, source, stats, drained),
                              StorUploads(run.stor, source))
    row = Row(f"POST {human_size(size)} x{count} +S3", "MB/s", "wt on", "wt off", GOALS["wt"],
              both.subject, both.reference)

    def note_drain() -> None:
        drains = sorted(stats.drains)
        row.notes[:] = [f"outbox drain (201 -> marker gone and object in the bucket), "
                        f"{len(drains)} files: median {statistics.median(drains) * 1000:,.0f} ms,"
                        f" max {drains[-1] * 1000:,.0f} ms"]

    row.after_round = note_drain
    return row


def trust_builders(run: Run) -> dict[str, tuple[str, Callable[[], Row | list[Row]]]]:
    """HEAD and duplicate-POST rows (trust_rows.py), each against its ceiling."""
    web_root = run.workdir / "trust-web"
    web_root.mkdir(exist_ok=True)
    built: dict[str, Server] = {}

    def web() -> Server:
        if "web" not in built:
            built["web"] = start_twistd_web(run.servers, run.build, web_root)
        return built["web"]

    return bench_rows(run.stor, run.pairs, run.args.big_size, web_root, web, run.workdir, GOALS)


def build_rows(run: Run, selected: Sequence[str]) -> list[Row]:
    """Set up the servers and files of the selected rows, in report order.

    A row whose setup fails is reported as FAILED and the others still run.
    """
    args = run.args
    builders: dict[str, tuple[str, Callable[[], Row | list[Row]]]] = {
        "get4k": ("GET 4 KiB", lambda: get_small_rows(run)),
        "get256m": (f"GET {human_size(args.big_size)}", lambda: get_big_row(run)),
        "post4m": (f"POST {human_size(args.post_size)}",
                   lambda: post_row(run, "post4m", args.post_size, args.post_count)),
        "post256m": (f"POST {human_size(args.big_size)}",
                     lambda: post_row(run, "post256m", args.big_size, 1)),
        "post4k": ("POST 4 KiB", lambda: post_small_row(run, "post4k", 4 << 10, args.clients)),
        "post64k": ("POST 64 KiB",
                    lambda: post_small_row(run, "post64k", 64 << 10, args.clients)),
        "post4k1": ("POST 4 KiB, 1 client", lambda: post_small_row(run, "post4k1", 4 << 10, 1)),
        **trust_builders(run),
        "wt": ("POST +S3", lambda: write_through_row(run)),
    }
    rows: list[Row] = []
    for key in ALL_ROWS:
        if key not in selected:
            continue
        name, build = builders[key]
        try:
            built = build()
        except BenchError as exc:
            print(f"  {name}: setup FAILED: {str(exc).splitlines()[0]}", flush=True)
            built = failed_row(name, exc)
        rows += built if isinstance(built, list) else [built]
    return rows


# --------------------------------------------------------------------------
# memory


def report_rss(run: Run) -> None:
    """The main stor's peak over the run, and the opt-in big upload to a fresh stor."""
    hwm = read_status_kb(run.stor.pid, "VmHWM") or 0
    print(f"\nstor's peak RSS over the whole run (VmHWM): {fmt_mb(hwm)}")
    size = run.args.rss_upload
    if size is None:
        print(f"  (the goal, < {RSS_GOAL_MB} MB during a 4 GiB upload, is measured with "
              "--rss-upload 4GiB)")
        return
    free = os.statvfs(run.workdir)
    if free.f_bavail * free.f_frsize < 3.2 * size:
        raise BenchError(f"--rss-upload {human_size(size)} needs 3x that free in "
                         f"{run.workdir} (source + two copies)")
    print(f"RSS: writing {human_size(size)} of random data, then one upload to a fresh stor ...",
          flush=True)
    source = PostSource(run.workdir / "rss.bin", size)
    fresh = start_stor(run.servers, run.build, run.pairs, name="stor (RSS)")
    try:
        before = read_status_kb(fresh.pid, "VmRSS") or 0
        seconds, sampled, hwm = rss_upload(fresh, source)
    finally:
        run.servers.stop(fresh)
        source.path.unlink()
    peak_mb = max(sampled, hwm) * 1024 / 1e6
    verdict = "ok" if peak_mb < RSS_GOAL_MB else "MISS"
    print(f"peak RSS during a {human_size(size)} upload: {peak_mb:,.0f} MB "
          f"(goal < {RSS_GOAL_MB} MB)  {verdict}")
    print(f"  {fmt_mb(before)} before, {fmt_mb(sampled)} sampled peak, VmHWM {fmt_mb(hwm)}; "
          f"{seconds:.1f} s, {size / seconds / 1e6:,.0f} MB/s")


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; the defaults are the issue's workloads."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                        help=f"alternating rounds per row (default {MIN_ROUNDS}; fewer is "
                             "allowed for a quick look but judged by no one)")
    parser.add_argument("--rows", default=",".join(ALL_ROWS),
                        help=f"comma-separated rows to run (default all: {','.join(ALL_ROWS)})")
    parser.add_argument("--no-s3", action="store_true",
                        help="skip the write-through row (it needs moto's server)")
    parser.add_argument("--duration", type=float, default=5,
                        help="seconds of each wrk measurement (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: leaves the other core to the server)")
    parser.add_argument("--workers", type=int, default=None,
                        help="also GET 4 KiB from stor started with --workers N")
    parser.add_argument("--big-size", type=parse_size, default=parse_size("256MiB"),
                        help="size of the big GET and POST (default 256MiB)")
    parser.add_argument("--get-repeat", type=int, default=2,
                        help="big GETs (and sha256 passes) per measurement (default 2)")
    parser.add_argument("--post-size", type=parse_size, default=parse_size("4MiB"),
                        help="size of the small-file POST rows (default 4MiB)")
    parser.add_argument("--post-count", type=int, default=16,
                        help="uploads per measurement of the 4 MiB row (default 16)")
    parser.add_argument("--small-count", type=int, default=160,
                        help="files per measurement of the 4 KiB / 64 KiB rows (default 160)")
    parser.add_argument("--clients", type=int, default=8,
                        help="concurrent clients of the 4 KiB / 64 KiB rows (default 8)")
    parser.add_argument("--wt-count", type=int, default=8,
                        help="uploads per measurement of the write-through row (default 8)")
    parser.add_argument("--rss-upload", type=parse_size, default=None, metavar="SIZE",
                        help="also measure stor's peak RSS during one SIZE upload, e.g. 4GiB")
    parser.add_argument("--tmpdir", type=Path, default=None,
                        help="where the throw-away storages go (default: the system temp "
                             "dir); its filesystem is what the POST rows measure")
    args = parser.parse_args(argv)
    counts = ("rounds", "connections", "wrk_threads", "get_repeat", "post_count",
              "small_count", "clients", "wt_count")
    if args.duration <= 0 or any(getattr(args, name) < 1 for name in counts):
        parser.error("--duration and every count must be positive")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    selected = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(ALL_ROWS))
    if unknown or not selected:
        parser.error(f"unknown rows {unknown}; choose from {','.join(ALL_ROWS)}")
    if args.no_s3 and "wt" in selected:
        selected.remove("wt")
    args.selected = selected
    return args


def run(args: argparse.Namespace) -> None:
    """Set up, run the rounds, print the report; raises on failure."""
    build = current_build()
    build.tool("twistd")
    wrk = None
    with temp_workdir(args.tmpdir) as workdir, Servers(workdir) as servers:
        if "get4k" in args.selected:
            wrk = WrkSettings(require_program("wrk", "install it with `apt-get install wrk` "
                                              "(`make bench` does)"),
                              args.duration, args.connections, args.wrk_threads, workdir)
        print(f"stor bench: {os.cpu_count()} cores, python {platform.python_version()}, "
              f"{args.rounds} rounds, temp dir {workdir}", flush=True)
        if (busy := busy_note()) is not None:
            warn(busy)
        if args.rounds < MIN_ROUNDS:
            warn(f"{args.rounds} rounds: fewer than {MIN_ROUNDS}, a quick look, not a judgement")
        pairs = make_storages(workdir / "storage")
        stor = start_stor(servers, build, pairs)
        session = Run(args, workdir, servers, build, pairs, stor, wrk)
        print("setting up (files, servers, warm-up) ...", flush=True)
        rows = build_rows(session, args.selected)
        run_rounds(rows, args.rounds, lambda line: print(line, flush=True))
        print()
        summary(rows)
        print("(MB = 10^6 bytes; ratio = median over rounds of stor / reference in the same "
              "round; spread = max/min of those ratios; 1-minute load average at the end "
              f"{os.getloadavg()[0]:.1f})")
        report_rss(session)
        stop_process(stor)
        raise_failures(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when the measurements ran, 1 on failure, 2 for a missing tool."""
    return guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
