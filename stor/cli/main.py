"""The ``stor`` command: run the daemon and small operator tools.

``stor serve`` is ``twistd -n stor`` with the same options; ``stor
check-config`` validates a config file without starting anything: every error
and every warning on a line of its own (``stor: config error: <key>:
<message>``, the lines start-up prints), exit 0, or 2 when there is an error.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from stor import __version__
from stor.cli import s3sync
from stor.cli import client
from stor.cli import scrub
from stor.cli import preflight
from stor.config import Config, check_config
from stor.config.problems import EXIT_CONFIG, NO_CONFIG_FILE, Problems, report_lines
from stor.config.systemd import check_unit, unit_user


def _check_config(args: argparse.Namespace) -> int:
    """Every error and warning of the file (and ``--unit``), one line each; exit 2 on an error."""
    path = args.config or os.environ.get("CONFIG_FILE")
    if not path:
        sys.stderr.write(f"stor: {NO_CONFIG_FILE}\n")
        return EXIT_CONFIG
    checked = check_config(path)
    found = Problems(list(checked.errors), list(checked.warnings))
    if args.unit:
        grace = checked.config.shutdown_grace_period if checked.config is not None else None
        check_unit(args.unit, grace, found)
    if checked.config is not None:
        _dry_run(args, checked.config, found)
    if args.strict:  # every warning is an error: a typo like basic_auht must not pass
        found = Problems(found.errors + found.warnings, [])
    for line in report_lines(found.errors, found.warnings):
        sys.stderr.write(line + "\n")
    if found.errors or checked.config is None:
        return EXIT_CONFIG
    pairs = len(checked.config.storage_pairs)
    sys.stdout.write(f"{path}: OK ({pairs} storage pair{'s' if pairs != 1 else ''})\n")
    return 0


def _dry_run(args: argparse.Namespace, config: Config, found: Problems) -> None:
    """What start-up would meet: storages and log files as the daemon's user, the peers."""
    name = args.user or (unit_user(args.unit) if args.unit else None)
    try:
        user = preflight.daemon_user(name)
    except (KeyError, OverflowError):
        found.error("--user", f"no such user: {name}")
        return
    try:
        preflight.check_storages(config, user, found)
        preflight.check_log_files(config, user, found)
    except PermissionError as e:
        found.warn("--user", str(e))
    if args.probe:
        preflight.probe_peers(config, found)


def _serve(args: argparse.Namespace) -> int:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    argv = [twistd, "-n", "--pidfile=", "stor"]
    if args.config:
        argv += ["--config", args.config]
    if args.listen:
        argv += ["--listen", args.listen]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    if args.log_format:
        argv += ["--log-format", args.log_format]
    os.execv(twistd, argv)
    return 1  # not reached


def _scrub(args: argparse.Namespace) -> int:
    """Check every replica (``--repair`` mends them); see :mod:`stor.cli.scrub`."""
    return scrub.run_command(args)


EXIT_CODES = """\
exit status:
  0  done (check-config: the file is valid; scrub: every replica is good)
  1  the command ran and found or met a problem (a replica to repair, a file
     that failed to transfer, a daemon that cannot listen)
  2  a usage or config error, reported before anything is done
  130  interrupted by SIGINT or SIGTERM (get keeps its partial download)
Each command's own --help says more."""


def parser() -> argparse.ArgumentParser:
    """The argument parser; later subcommands register here."""
    p = argparse.ArgumentParser(
        prog="stor", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"stor {__version__}: store and serve files addressed by their SHA-256; "
                    "the daemon's operator tools and its client.",
        epilog=EXIT_CODES)
    p.add_argument("--version", action="version", version=f"stor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser(
        "check-config", help="validate a config file and exit",
        description="A dry run of start-up: validate the config file, then check what the "
                    "daemon would meet — every storage and File log output as the daemon's "
                    "user, the unit (--unit), the peers (--probe) — creating and changing "
                    "nothing. One line per problem on stderr; exit 0, or 2 on an error "
                    "(with --strict, on a warning too).")
    check.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
    check.add_argument("--unit", metavar="FILE",
                       help="systemd unit of the service: warn if shutdown_grace_period is not "
                            "below its TimeoutStopSec (drop-ins in FILE.d/ are read too); its "
                            "User= is the daemon's user of the checks")
    check.add_argument("--user", metavar="USER",
                       help="check the storages and log files as this user (default: the "
                            "unit's User=, else the user running the check)")
    check.add_argument("--strict", action="store_true",
                       help="treat every warning as an error (exit 2)")
    check.add_argument("--probe", action="store_true",
                       help="also check that S3, RabbitMQ and memcached answer")
    check.set_defaults(func=_check_config)
    serve = sub.add_parser("serve", help="run the daemon in the foreground (twistd -n stor …)")
    serve.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
    serve.add_argument("--listen", "-l", help="Twisted endpoint; overrides the config's listen")
    serve.add_argument("--workers", type=int, help="worker processes sharing the socket")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.set_defaults(func=_serve)
    scrubber = sub.add_parser("scrub", help="check every replica hashes to its name and has its twin")
    scrub.add_arguments(scrubber)
    scrubber.set_defaults(func=_scrub)
    s3sync.add_command(sub)
    client.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stor`` console script."""
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
