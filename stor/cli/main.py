"""The ``stor`` command: run the daemon and small operator tools.

``stor serve`` is ``twistd -n stor`` with the same options; ``stor
check-config`` validates a config file without starting anything (exit 0 or 2,
the same one-line errors as start-up).
"""

import argparse
import os
import sys
from collections.abc import Sequence

from stor import __version__
from stor.cli import s3sync
from stor.cli import client
from stor.cli import scrub
from stor.config import load_config
from stor.core.errors import ConfigError


def _check_config(args: argparse.Namespace) -> int:
    path = args.config or os.environ.get("CONFIG_FILE")
    if not path:
        sys.stderr.write("stor: no config file: give --config FILE or set CONFIG_FILE\n")
        return 2
    try:
        config = load_config(path)
        _check_listen(config.listen)
    except ConfigError as e:
        sys.stderr.write(f"stor: config error: {e}\n")
        return 2
    pairs = len(config.storage_pairs)
    sys.stdout.write(f"{path}: OK ({pairs} storage pair{'s' if pairs != 1 else ''})\n")
    for key in config.unknown_keys:
        sys.stdout.write(f"{path}: note: unknown key {key!r} is ignored\n")
    return 0


def _check_listen(listen: str) -> None:
    """The endpoint parses as start-up will parse it (nothing listens)."""
    from twisted.internet import reactor

    from stor.ops.service import server_endpoint

    server_endpoint(reactor, listen)


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


def parser() -> argparse.ArgumentParser:
    """The argument parser; later subcommands register here."""
    p = argparse.ArgumentParser(prog="stor", description=f"stor {__version__}")
    p.add_argument("--version", action="version", version=f"stor {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("--config", "-c", help="config file (default: $CONFIG_FILE)")
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
