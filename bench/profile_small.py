"""Where the time of a small upload goes: CPU per thread, pool jobs, system calls.

Usage (from the repository root, with the venv's python)::

    .venv/bin/python bench/profile_small.py [--size 4096] [--count 400] [--clients 8]
                                            [--strace] [--py-spy]

Starts one stor on two throw-away pairs (as ``make bench`` does) through
``bench/countjobs.py``, which counts the disk pool's jobs (reactor <->
thread round trips); uploads ``--count`` fresh files of ``--size`` bytes
from ``--clients`` keep-alive clients (after a warm-up of the same size), and
prints per upload:

- the CPU of the reactor thread (the main thread) and of every other thread;
- the disk-pool jobs (each one a hand-off to a thread and a result back);
- with ``--strace``, a second identical load under ``strace -c -f``: the
  system calls per upload (``fsync``, ``syncfs``, ``futex`` ...);
- with ``--py-spy``, a third load sampled by ``py-spy record --format raw``
  (install it into the venv: ``pip install py-spy``; not a stor dependency):
  the functions holding the reactor thread, by share of samples.

The figures are what docs/benchmarks.rst's "Where the time of a small upload
goes" records.  Only the standard library is imported here.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness import (BenchError, Servers, current_build, guarded, make_storages, start_stor,
                     temp_workdir)
from load import post_concurrently
from rows import random_uploads
from rounds import print_table

HERE = Path(__file__).resolve().parent


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of ``pid`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/stat", encoding="ascii") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(task)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def jobs_count(log: Path) -> tuple[int, int]:
    """The pool's jobs and the batches of small uploads, as ``countjobs.py`` writes
    them on SIGUSR2."""
    text = log.read_text(errors="replace")
    lines = [line for line in text.splitlines() if "stor-bench-jobs" in line]
    if not lines:
        return -1, -1
    fields = lines[-1].split("stor-bench-jobs", 1)[1].split()
    return int(fields[0]), int(fields[2])


def ask_jobs(pid: int, log: Path) -> tuple[int, int]:
    before = log.read_text(errors="replace").count("stor-bench-jobs")
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while log.read_text(errors="replace").count("stor-bench-jobs") == before:
        if time.monotonic() > deadline:
            raise BenchError("countjobs did not answer SIGUSR2")
        time.sleep(0.01)
    return jobs_count(log)


def load(port: int, size: int, count: int, clients: int) -> tuple[float, list[float]]:
    """Upload ``count`` fresh files; the seconds and every latency."""
    uploads = random_uploads(size, count)
    os.sync()
    seconds, results = post_concurrently(port, uploads, clients)
    bad = [r for r in results if r.status != 201]
    if bad:
        raise BenchError(f"{len(bad)} uploads answered {bad[0].status}: {bad[0].body[:200]}")
    for result in results:
        for path in result.stored_paths():
            os.unlink(path)
    return seconds, sorted(r.seconds for r in results)


def run(args: argparse.Namespace) -> None:
    build = current_build()
    with temp_workdir(args.tmpdir) as workdir, Servers(workdir) as servers:
        pairs = make_storages(workdir / "storage")
        env = dict(os.environ, STOR_BENCH_REAL_TWISTD=str(build.tool("twistd")))
        wrapper = workdir / "bin"
        wrapper.mkdir()
        # start_stor runs <bin>/twistd: a bin dir whose twistd is countjobs
        (wrapper / "twistd").symlink_to(HERE / "countjobs.sh")
        stor = start_stor(servers, type(build)("stor", wrapper), pairs, env=env)
        load(stor.port, args.size, min(args.count, 100), args.clients)  # warm-up
        before_cpu, before_jobs = thread_cpu(stor.pid), ask_jobs(stor.pid, stor.log_path)
        seconds, latencies = load(stor.port, args.size, args.count, args.clients)
        after_cpu, after_jobs = thread_cpu(stor.pid), ask_jobs(stor.pid, stor.log_path)
        n = args.count
        reactor = after_cpu.get(stor.pid, 0) - before_cpu.get(stor.pid, 0)
        others = sum(v - before_cpu.get(t, 0) for t, v in after_cpu.items() if t != stor.pid)
        print(f"{n} uploads of {args.size} B from {args.clients} clients: {n / seconds:,.0f} "
              f"files/s, p50 {latencies[n // 2] * 1000:.1f} ms, "
              f"p99 {latencies[int(n * 0.99)] * 1000:.1f} ms")
        print_table([
            ["per upload", "value"],
            ["reactor thread CPU", f"{reactor / n * 1000:.2f} ms"],
            ["other threads CPU", f"{others / n * 1000:.2f} ms"],
            ["disk-pool jobs (round trips)", f"{(after_jobs[0] - before_jobs[0]) / n:.2f}"],
            ["batches (one round trip each)", f"{(after_jobs[1] - before_jobs[1]) / n:.2f}"
                                              f" ({n / max(1, after_jobs[1] - before_jobs[1]):.1f}"
                                              " uploads a batch)"],
        ])
        if args.strace:
            strace_load(stor.pid, stor.port, args, workdir)
        if args.py_spy:
            py_spy_load(stor.pid, stor.port, args, workdir)


def strace_load(pid: int, port: int, args: argparse.Namespace, workdir: Path) -> None:
    out = workdir / "strace.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                              stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    try:
        load(port, args.size, args.count, args.clients)
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
    rows = [["syscall", "calls per upload", "errors per upload"]]
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls = int(parts[3])
            errors = int(parts[4]) if len(parts) == 6 else 0
            rows.append([parts[-1], f"{calls / args.count:.2f}",
                         f"{errors / args.count:.2f}" if errors else ""])
    print(f"\nstrace -c -f, {args.count} uploads (calls the tracer slowed, counts exact):")
    print_table(rows[:1] + sorted(rows[1:], key=lambda r: -float(r[1]))[:25])


def py_spy_load(pid: int, port: int, args: argparse.Namespace, workdir: Path) -> None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise BenchError("py-spy is not installed: .venv/bin/pip install py-spy")
    out = workdir / "spy.txt"
    sampler = subprocess.Popen([spy, "record", "--nonblocking", "--threads", "--format", "raw",
                                "-r", "250", "-o", str(out), "-p", str(pid)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        load(port, args.size, args.count, args.clients)
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if f"(tid {pid})" not in stack.split(";")[0] and "MainThread" not in stack.split(";")[0]:
            continue
        frames = stack.split(";")[1:]
        if not frames or "select" in frames[-1] and "epoll" in stack:
            pass
        samples = int(count)
        total += samples
        own[_short(frames[-1]) if frames else "?"] += samples
        for frame in dict.fromkeys(_short(f) for f in frames):
            inclusive[frame] += samples
    print(f"\npy-spy, reactor thread, {total} samples (idle in epoll included):")
    print_table([["function (inclusive)", "share"]] +
                [[name, f"{100 * c / total:.0f}%"] for name, c in inclusive.most_common(30)])
    print_table([["function (own)", "share"]] +
                [[name, f"{100 * c / total:.0f}%"] for name, c in own.most_common(15)])


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.split(":")[0]
    parts = file.split("/")
    return f"{name} ({'/'.join(parts[-2:])})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--py-spy", action="store_true")
    parser.add_argument("--tmpdir", type=Path, default=None)
    return guarded(run, parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
