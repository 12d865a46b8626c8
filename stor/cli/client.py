"""``stor put``, ``stor get``, ``stor verify``: the client's command line.

Parses and checks arguments (a bad one is a usage error, exit 2, before any
request), reads SHAs from stdin when none are given, and runs the command
from :mod:`stor.client.commands` on the reactor.  Exit status: 0 every item
succeeded, 1 some item failed, 2 usage error, 130 interrupted.
"""

import argparse
import os
import sys
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import unquote, urlsplit, urlunsplit

from stor.cli.usage import UsageError
from stor.client.settings import DEFAULT_STORAGE, Backoff, Settings
from stor.core.errors import MalformedSha
from stor.core.sha import parse_sha

if TYPE_CHECKING:  # imported when run: `stor --help` loads no reactor
    from stor.core.reactor import Reactor

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_commands(subparsers: Any) -> None:
    """Register ``put``, ``get`` and ``verify`` on the ``stor`` command's subparsers."""
    put = subparsers.add_parser("put", help="upload files (skips what the server already has)",
                                description="Upload files; prints '<sha>  <file>  <status>' per file.")
    _common(put)
    put.add_argument("--auth", metavar="USER:PASS",
                     help="Basic credentials for uploads (default: $STOR_AUTH)")
    put.add_argument("files", nargs="+", metavar="FILE")
    put.set_defaults(func=_put)

    get = subparsers.add_parser("get", help="download files by SHA, resuming partial downloads",
                                description="Download into DIR/<sha>, verified; SHAs from the "
                                "arguments or, one per line (first field), from stdin.")
    _common(get)
    get.add_argument("-o", "--output", metavar="DIR", default=".",
                     help="directory for the files (created if missing; default: .)")
    get.add_argument("shas", nargs="*", metavar="SHA")
    get.set_defaults(func=_get)

    verify = subparsers.add_parser("verify", help="download and hash files without keeping them")
    _common(verify)
    verify.add_argument("shas", nargs="*", metavar="SHA")
    verify.set_defaults(func=_verify)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL",
                   help=f"stor server (default: $STOR_URL, else {DEFAULT_STORAGE})")
    p.add_argument("-j", "--parallel", type=_positive_int, default=4, metavar="N",
                   help="transfers at once (default: 4)")
    p.add_argument("--retries", type=_count, default=5, metavar="N",
                   help="attempts after a connection error or a 5xx, with backoff (default: 5)")
    p.add_argument("--timeout", type=_positive_float, default=60.0, metavar="SECONDS",
                   help="to connect, to get an answer, and without a byte moving (default: 60)")


def _put(args: argparse.Namespace) -> int:
    from stor.client import commands

    return _guarded(args, lambda settings: _run(
        lambda reactor: commands.put(reactor, settings, _unique(args.files), sys.stdout,
                                     sys.stderr, sys.stderr.isatty()), settings))


def _get(args: argparse.Namespace) -> int:
    from stor.client import commands

    def start(settings: Settings) -> int:
        shas = _shas(args.shas, sys.stdin)
        try:
            os.makedirs(args.output, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create {args.output}: {e.strerror}") from None
        return _run(lambda reactor: commands.get(reactor, settings, shas, args.output, sys.stdout,
                                                 sys.stderr, sys.stderr.isatty()), settings)
    return _guarded(args, start)


def _verify(args: argparse.Namespace) -> int:
    from stor.client import commands

    def start(settings: Settings) -> int:
        shas = _shas(args.shas, sys.stdin)
        return _run(lambda reactor: commands.verify(reactor, settings, shas, sys.stdout,
                                                    sys.stderr, sys.stderr.isatty()), settings)
    return _guarded(args, start)


def _guarded(args: argparse.Namespace, start: Callable[[Settings], int]) -> int:
    try:
        return start(settings_from(args, os.environ))
    except UsageError as e:
        sys.stderr.write(f"stor {args.command}: {e}\n")
        return EXIT_USAGE


def settings_from(args: argparse.Namespace, environ: dict[str, str] | Any) -> Settings:
    """The :class:`Settings` the arguments and environment ask for (or :class:`UsageError`)."""
    storage, url_auth = parse_storage(args.storage or environ.get("STOR_URL") or DEFAULT_STORAGE)
    auth = url_auth
    if hasattr(args, "auth"):  # only put sends credentials; get and verify ignore STOR_AUTH
        text = args.auth or environ.get("STOR_AUTH")
        auth = parse_auth(text) if text else url_auth
    return Settings(storage=storage, auth=auth, parallel=args.parallel,
                    backoff=Backoff(retries=args.retries), timeout=args.timeout)


def parse_storage(url: str) -> tuple[str, tuple[str, str] | None]:
    """(base URL without credentials or trailing slash, credentials found in it)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--storage must be an http:// or https:// URL, got {url!r}")
    if parts.query or parts.fragment:
        raise UsageError(f"--storage must not have a query or fragment, got {url!r}")
    try:
        parts.port
    except ValueError:
        raise UsageError(f"--storage has a bad port: {url!r}") from None
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")), auth


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise UsageError("--auth (or STOR_AUTH) must be USER:PASS")
    return user, password


def _shas(arguments: list[str], stdin: TextIO) -> list[str]:
    """The SHAs to work on: the arguments, else the first field of each line of stdin."""
    if not arguments and stdin.isatty():
        raise UsageError("give SHAs as arguments or one per line on stdin")
    tokens = arguments or list(_first_fields(stdin))
    shas, bad = [], []
    for token in tokens:
        try:
            shas.append(parse_sha(token))
        except MalformedSha:
            bad.append(token)
    if bad:
        raise UsageError("not a sha256 (64 hex digits): " + ", ".join(repr(b[:80]) for b in bad[:5])
                         + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    return _unique(shas)


def _first_fields(lines: Iterable[str]) -> Iterable[str]:
    """``sha256sum`` and ``stor put`` output both start with the SHA; blank and # lines skipped."""
    for line in lines:
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            yield fields[0]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _run(main: Callable[["Reactor"], Coroutine[Any, Any, int]], settings: Settings) -> int:
    """Run ``main(reactor)`` to its end; its exit status, or 130 when a signal stopped it."""
    from twisted.internet.defer import ensureDeferred
    from twisted.python.failure import Failure

    from stor.core.reactor import the_reactor

    reactor = the_reactor()
    reactor.suggestThreadPoolSize(max(10, settings.parallel + 4))
    outcome: list[int | Failure] = []

    def start() -> None:
        d = ensureDeferred(main(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        if sys.stderr.isatty():
            sys.stderr.write("\n")  # below the progress bar
        sys.stderr.write("stor: interrupted (partial downloads are kept as DIR/.<sha>.part)\n")
        return EXIT_INTERRUPTED
    result = outcome[0]
    if isinstance(result, Failure):
        sys.stderr.write(f"stor: internal error: {result.getTraceback()}")
        return EXIT_FAILED
    return int(result)


def _positive_int(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
    return value
