"""``stor scrub``: the command around :mod:`stor.disk.scrub`.

It checks the arguments and the storages (exit 2 before anything is read),
counts what there is to hash (a ``stat``-only first pass, so progress has a
total), scrubs with a progress display (:mod:`stor.cli.scrub_progress`),
prints problems as they are found and a summary (or ``--json``), and sends the
run's figures to the config's ``statsite``::

    <prefix>.scrub.files:<n>|c          <prefix>.scrub.bytes:<n>|c
    <prefix>.scrub.seconds:<ms>|ms      (a statsd timing: milliseconds)
    <prefix>.scrub.<kind>.count:<n>|c           for every problem kind
    <prefix>.scrub.repaired.<kind>.count:<n>|c  for every problem kind

These lines are never sampled (``sample_rate`` is for per-request lines; a
run's totals are one line each).  They are sent at the end with a plain
blocking socket (one UDP datagram per line, or one TCP connection): a
statsite that cannot be reached is one line on stderr and changes nothing
else, the exit status included.
"""

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TextIO

from stor.cli.usage import (
    UsageError, check_listable, command_config, positive_number, positive_rate,
    selected_storages,
)
from stor.cli.owner import OwnerError, act_as_storage_owner
from stor.config import Config, StatsiteConfig
from stor.core.errors import ConfigError
from stor.disk.locks import ShaLocks, default_lock_dir, service_owner
from stor.observe.statsd import StatsdMetrics
from stor.disk.scrub import KINDS, Problem, Report, Scrubber, Throttle, count, twins
from stor.cli.scrub_progress import Progress

EXIT_ERROR = 2
PROGRESS_EVERY = 30.0
"""Default seconds between progress lines when stderr is not a terminal."""
STATSITE_TIMEOUT = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``stor scrub``'s options on its subparser."""
    parser.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
    parser.add_argument("--repair", action="store_true",
                        help="replace corrupt replicas and create missing twins from verified "
                             "copies; remove stale temp files")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument("--max-mbps", type=positive_rate, metavar="N",
                        help="read at most N megabytes (10^6 bytes) per second")
    parser.add_argument("--progress-every", type=_positive_seconds, default=PROGRESS_EVERY,
                        metavar="SECONDS",
                        help="when stderr is not a terminal, a progress line every SECONDS "
                             f"(default {PROGRESS_EVERY:g})")
    parser.add_argument("storages", nargs="*", metavar="STORAGE",
                        help="only these storages (default: every configured one)")


def _positive_seconds(text: str) -> float:
    return positive_number(text, "seconds", "a number of seconds")


def run_command(args: argparse.Namespace, stdout: TextIO | None = None,
                stderr: TextIO | None = None) -> int:
    """``stor scrub``: returns the exit status (0 clean, 1 problems remain, 2 error)."""
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        config = command_config(args)
        storages = selected_storages(config, args.storages)
        act_as_storage_owner(config.storages)  # before anything below them is touched
        check_listable(storages)
        lock_dir = config.lock_dir or default_lock_dir()
        locks = ShaLocks(lock_dir, owner=service_owner(lock_dir))  # root on root's storages
        locks.prepare()  # the daemon's directory, checked as the daemon checks it
    except ConfigError as e:
        err.write(f"stor scrub: {e}\n")
        return EXIT_ERROR
    except OwnerError as e:
        err.write(f"stor scrub: {e}\n")
        return EXIT_ERROR
    except UsageError as e:
        err.write(f"stor scrub: {e}\n")
        return EXIT_ERROR
    report = scrub(config, storages, args, err, None if args.json else out, locks)
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_summary(report, args.repair, out)
    if config.statsite is not None:
        send_metrics(config.statsite, report, err)
    return report.exit_code()


def scrub(config: Config, storages: Sequence[str], args: argparse.Namespace,
          err: TextIO, lines: TextIO | None, locks: ShaLocks | None = None) -> Report:
    """Count, then scrub ``storages`` with the command's options; problem lines go to ``lines``."""
    progress = Progress(err, terminal=_is_terminal(err),
                        every=getattr(args, "progress_every", PROGRESS_EVERY))

    def show(problem: Problem) -> None:
        if lines is not None:
            progress.clear()
            lines.write(_problem_line(problem) + "\n")
            lines.flush()

    report = Report(list(storages))
    counting = time.monotonic()
    count(storages, on_file=progress.counted)
    report.count_seconds = time.monotonic() - counting
    progress.counting_done()
    scrubber = Scrubber(
        twins=twins(config), report=report,
        locks=locks or ShaLocks(config.lock_dir or default_lock_dir()), repair=args.repair,
        throttle=Throttle(args.max_mbps * 1e6 if args.max_mbps else None),
        progress=progress, on_problem=show,
    )
    scrubber.run(storages)
    progress.clear()
    return report


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- output -------------------------------------------------------------------


def _problem_line(problem: Problem) -> str:
    state = "repaired" if problem.repaired else "NOT repaired"
    return f"{problem.kind:<14} {problem.path}  [{state}] {problem.detail}".rstrip()


def _print_summary(report: Report, repair: bool, out: TextIO) -> None:
    rate = report.bytes / max(report.seconds, 1e-9) / 1e6
    out.write(f"stor scrub: {report.files} files, {_megabytes(report.bytes)} checked on "
              f"{len(report.storages)} storage(s) in {report.seconds:.1f} s ({rate:.1f} MB/s); "
              f"counting took {report.count_seconds:.1f} s\n")
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


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# -- statsite -----------------------------------------------------------------


def metric_lines(statsite: StatsiteConfig, report: Report) -> list[bytes]:
    """The run's statsd lines, named and formatted as the daemon's (never sampled)."""
    lines: list[bytes] = []
    metrics = StatsdMetrics(replace(statsite, sample_rate=1.0), lines.append)
    metrics.incr("scrub.files", report.files)
    metrics.incr("scrub.bytes", report.bytes)
    metrics.timing("scrub.seconds", report.seconds * 1000)
    for kind, n in report.counts().items():
        metrics.incr(f"scrub.{kind}.count", n)
    for kind, n in report.repaired_counts().items():
        metrics.incr(f"scrub.repaired.{kind}.count", n)
    return lines


def send_metrics(statsite: StatsiteConfig, report: Report, err: TextIO) -> bool:
    """Send the run's lines to ``statsite``; a failure is one line on ``err``."""
    lines = metric_lines(statsite, report)
    try:
        if statsite.proto == "tcp":
            with socket.create_connection((statsite.host, statsite.port),
                                          timeout=STATSITE_TIMEOUT) as s:
                s.sendall(b"".join(lines))
        else:
            family, kind, proto, _, address = socket.getaddrinfo(
                statsite.host, statsite.port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, kind, proto) as s:
                for line in lines:
                    s.sendto(line, address)
    except OSError as e:  # socket.gaierror and timeouts are OSErrors too
        err.write(f"stor scrub: cannot send metrics to statsite {statsite.host}:{statsite.port} "
                  f"({statsite.proto}): {e}\n")
        return False
    return True

