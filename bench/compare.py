"""Compare two stor builds on this machine: new (this tree) / old, in paired alternating rounds.

Usage (from the repository root; ``make bench-compare BASE=<ref>`` does this)::

    .venv/bin/python bench/compare.py --base <git ref> [--rounds 5] [--rows get4k,post4m,post256m]
    .venv/bin/python bench/compare.py --base-dir /work/base   # a checkout with its .venv

"new" is the stor installed in the venv running this script (this tree, for
``make``); "old" is either a git ref, checked out into a throw-away worktree
with its own venv (``git worktree add --detach``, ``python -m venv``, ``pip
install -e``; reused on the next run when present), or a directory holding a
checkout and its ``.venv``.

Both builds run at once from the same minimal config (``storage_pairs``,
``basic_auth``, ``listen``, ``check_mounts``: keys every build knows), over
the same storages, as ``twistd -n --pidfile= stor --config FILE``.  Each
round measures both back to back, the one going first alternating; every
round is printed, and each row's figure is the median of the per-round
new/old ratios.  The goal (the redesign and integrity issues): GET 4 KiB and
POST within 5 % of the old build (ratio >= 0.95).

Rows: ``get4k`` (GET of warm 4 KiB files with wrk, req/s), ``post4m`` (4 MiB
uploads one after another, the two builds taking turns file by file, MB/s), ``post256m`` (one 256 MiB upload, MB/s),
and, when asked, ``get256m`` (GET of one cached 256 MiB file, MB/s) and the
HEAD and duplicate-POST rows of ``trust_rows.py`` (``head4k``, ``head256m``,
``dup4k``, ``dup256m``, ``dup256me``).

Exit status: 0 when every measurement ran (a missed goal is printed as
``MISS``), 1 when something failed to run, 2 when a tool or a build is missing.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import (BenchError, Server, Servers, StorBuild, ToolMissing, busy_note,
                     current_build, guarded, human_size, make_storages, parse_size,
                     require_program, start_stor, temp_workdir)
from rounds import Row, failed_row, raise_failures, run_rounds, summary, warn
from trust_rows import trust_rows
from rows import (InterleavedUploads, PostSource, StorUploads, WrkSettings, big_get_measure,
                  check_get, make_big_file, make_small_files, wrk_measure)

ALL_ROWS = ("get4k", "get256m", "post4m", "post256m", "head4k", "head256m", "dup4k", "dup256m",
            "dup256me")
DEFAULT_ROWS = ("get4k", "post4m", "post256m")
GOAL = 0.95
MIN_ROUNDS = 5
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# the old build


def git(*args: str, cwd: Path = REPO) -> str:
    """Run git in ``cwd``; its stdout, stripped, or a BenchError with its stderr."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def describe(checkout: Path) -> str:
    """The commit a checkout is at (short sha and subject), or why not known."""
    try:
        return git("log", "-1", "--format=%h %s", cwd=checkout)
    except BenchError:
        return "(not a git checkout)"


def run_step(argv: Sequence[str], what: str) -> None:
    """Run a setup command with its output shown only when it fails."""
    print(f"  {what} ...", flush=True)
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"{what} failed (status {result.returncode}):\n"
                         f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def build_from_dir(checkout: Path, label: str = "old") -> StorBuild:
    """A checkout with its venv in ``.venv`` (as ``make install`` leaves it)."""
    bin_dir = checkout / ".venv" / "bin"
    if not (bin_dir / "twistd").exists():
        raise ToolMissing(f"{bin_dir / 'twistd'} not found: run `make install` in {checkout}")
    return StorBuild(label, bin_dir)


def build_from_ref(ref: str, cache: Path | None) -> tuple[StorBuild, Path]:
    """Check ``ref`` out into a worktree with its own venv, or reuse the one made before.

    The worktree is detached at the ref's commit (``git worktree add
    --detach``), named after that commit, so a moved branch gets a new one;
    ``pip install -e`` uses the ``compat`` editable mode, as the Makefile
    does, so twistd finds the build's ``stor`` plugin.
    """
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = cache or Path(tempfile.gettempdir()) / f"stor-bench-base-{commit[:12]}"
    if path.exists() and git("rev-parse", "HEAD", cwd=path) != commit:
        raise BenchError(f"{path} exists but is not at {commit[:12]}; remove it "
                         "(`git worktree remove --force PATH`) or pass another --base-cache")
    if not path.exists():
        # -f: reuse the name of a worktree whose directory was deleted (a cleaned /tmp)
        run_step(["git", "-C", str(REPO), "worktree", "add", "-f", "--detach", str(path), commit],
                 f"git worktree add {path} ({ref} = {commit[:12]})")
    venv = path / ".venv"
    if not (venv / "bin" / "twistd").exists() or not (venv / ".bench-installed").exists():
        run_step([sys.executable, "-m", "venv", str(venv)], f"python -m venv {venv}")
        run_step([str(venv / "bin" / "pip"), "install", "--quiet", "-e", str(path),
                  "--config-settings", "editable_mode=compat"], f"pip install -e {path}")
        (venv / ".bench-installed").touch()
    return build_from_dir(path), path


# --------------------------------------------------------------------------
# rows


def get_small_row(servers: tuple[Server, Server], pairs: Sequence[tuple[Path, Path]],
                  settings: WrkSettings) -> Row:
    """GET 4 KiB with wrk: the same 1000 files from both builds."""
    shas, _ = make_small_files(pairs, None)
    urls = [f"/{sha}" for sha in shas]
    for server in servers:
        check_get(server, urls[0], shas[0], 4096)
    new, old = servers
    return Row("GET 4 KiB", "req/s", "new", "old", GOAL,
               wrk_measure(new, urls, settings), wrk_measure(old, urls, settings))


def get_big_row(servers: tuple[Server, Server], pairs: Sequence[tuple[Path, Path]],
                size: int, repeat: int) -> Row:
    """GET of one cached big file from both builds."""
    sha, _ = make_big_file(pairs[0], size)
    for server in servers:
        check_get(server, f"/{sha}", sha, size)
    new, old = servers
    return Row(f"GET {human_size(size)}", "MB/s", "new", "old", GOAL,
               big_get_measure(new, f"/{sha}", size, repeat),
               big_get_measure(old, f"/{sha}", size, repeat))


def post_row(servers: tuple[Server, Server], workdir: Path, size: int, count: int) -> Row:
    """``count`` uploads of ``size``, one after another, to each build."""
    source = PostSource(workdir / f"post-{size}.bin", size)
    new, old = servers
    both = InterleavedUploads(count, size, StorUploads(new, source), StorUploads(old, source))
    return Row(f"POST {human_size(size)}" + (f" x{count}" if count > 1 else ""), "MB/s",
               "new", "old", GOAL, both.subject, both.reference)


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = parser.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", metavar="REF", help="the old build: a git ref of this repository")
    base.add_argument("--base-dir", type=Path, metavar="DIR",
                      help="the old build: a checkout with its venv in DIR/.venv")
    parser.add_argument("--base-cache", type=Path, default=None, metavar="DIR",
                        help="where --base's worktree goes (default: "
                             "<tmp>/stor-bench-base-<commit>, reused when present)")
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                        help=f"alternating rounds (default {MIN_ROUNDS})")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated rows (default {','.join(DEFAULT_ROWS)}; "
                             f"all: {','.join(ALL_ROWS)})")
    parser.add_argument("--duration", type=float, default=5,
                        help="seconds of each wrk measurement (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--post-count", type=int, default=16,
                        help="4 MiB uploads per measurement (default 16)")
    parser.add_argument("--big-size", type=parse_size, default=parse_size("256MiB"),
                        help="size of the big POST and GET (default 256MiB)")
    parser.add_argument("--get-repeat", type=int, default=2,
                        help="big GETs per measurement (default 2)")
    parser.add_argument("--tmpdir", type=Path, default=None,
                        help="where the throw-away storages go (default: the system temp dir)")
    args = parser.parse_args(argv)
    counts = ("rounds", "connections", "wrk_threads", "post_count", "get_repeat")
    if args.duration <= 0 or any(getattr(args, name) < 1 for name in counts):
        parser.error("--duration and every count must be positive")
    selected = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(ALL_ROWS))
    if unknown or not selected:
        parser.error(f"unknown rows {unknown}; choose from {','.join(ALL_ROWS)}")
    args.selected = selected
    return args


def old_build(args: argparse.Namespace) -> StorBuild:
    """The old build named on the command line, set up when it is a git ref."""
    if args.base_dir is not None:
        build = build_from_dir(args.base_dir.resolve())
        print(f"old: {args.base_dir} at {describe(args.base_dir)}")
        return build
    print(f"old: git ref {args.base}")
    build, path = build_from_ref(args.base, args.base_cache)
    print(f"old: worktree {path} at {describe(path)}")
    return build


def own_imports_env() -> dict[str, str]:
    """The environment for both builds, without ``PYTHONPATH``.

    Each build must import its own ``stor`` from its own venv; an inherited
    ``PYTHONPATH`` would make both import the same tree and compare it with
    itself.
    """
    env = dict(os.environ)
    if env.pop("PYTHONPATH", None):
        warn("PYTHONPATH is ignored: each build imports stor from its own venv")
    return env


def build_rows(args: argparse.Namespace, workdir: Path, servers: tuple[Server, Server],
               pairs: Sequence[tuple[Path, Path]]) -> list[Row]:
    """The selected rows, each set up now; a row whose setup fails is reported FAILED."""
    builders: dict[str, tuple[str, Callable[[], Row]]] = {}
    if "get4k" in args.selected:
        settings = WrkSettings(require_program("wrk", "install it with `apt-get install wrk` "
                                               "(`make bench-compare` does)"),
                               args.duration, args.connections, args.wrk_threads, workdir)
        builders["get4k"] = ("GET 4 KiB", lambda: get_small_row(servers, pairs, settings))
    builders["get256m"] = (f"GET {human_size(args.big_size)}", lambda: get_big_row(
        servers, pairs, args.big_size, args.get_repeat))
    builders["post4m"] = ("POST 4 MiB", lambda: post_row(servers, workdir, 4 << 20,
                                                          args.post_count))
    builders["post256m"] = (f"POST {human_size(args.big_size)}", lambda: post_row(
        servers, workdir, args.big_size, 1))
    builders.update(trust_rows(args.selected, servers, pairs, args.big_size, workdir, GOAL))
    rows = []
    for key in ALL_ROWS:
        if key not in args.selected:
            continue
        name, build = builders[key]
        try:
            rows.append(build())
        except BenchError as exc:
            print(f"  {name}: setup FAILED: {str(exc).splitlines()[0]}", flush=True)
            rows.append(failed_row(name, exc))
    return rows


def run(args: argparse.Namespace) -> None:
    """Set up both builds, run the rounds, print every round and the medians."""
    new = current_build("new")
    new.tool("twistd")
    print(f"new: {REPO} at {describe(REPO)}"
          + (" (+ uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no")
             else ""))
    old = old_build(args)
    if old.bin_dir.resolve() == new.bin_dir.resolve():
        raise BenchError("old and new are the same venv: nothing to compare")
    with temp_workdir(args.tmpdir, "stor-compare-") as workdir, Servers(workdir) as servers:
        print(f"stor compare: {os.cpu_count()} cores, python {platform.python_version()}, "
              f"{args.rounds} rounds, temp dir {workdir}", flush=True)
        if (busy := busy_note()) is not None:
            warn(busy)
        if args.rounds < MIN_ROUNDS:
            warn(f"{args.rounds} rounds: fewer than {MIN_ROUNDS}, a quick look, not a judgement")
        pairs = make_storages(workdir / "storage")
        env = own_imports_env()
        both = (start_stor(servers, new, pairs, name="new", env=env),
                start_stor(servers, old, pairs, name="old", env=env))
        print("setting up (files, warm-up) ...", flush=True)
        rows = build_rows(args, workdir, both, pairs)
        run_rounds(rows, args.rounds, lambda line: print(line, flush=True))
        print()
        summary(rows)
        print(f"(ratio = median over rounds of new / old measured back to back; goal: within "
              f"{(1 - GOAL) * 100:.0f} %, i.e. >= {GOAL}; spread = max/min of the ratios; "
              f"MB = 10^6 bytes; 1-minute load average at the end {os.getloadavg()[0]:.1f})")
        raise_failures(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when the measurements ran, 1 on failure, 2 for a missing tool or build."""
    return guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
