"""``stor put``, ``get``, ``verify``, ``delete``, ``du``, ``info``: the client's command line.

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
    """Register the client commands on the ``stor`` command's subparsers."""
    put = subparsers.add_parser("put", help="upload files and directories (skips what the server has)",
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

    delete = subparsers.add_parser(
        "delete", help="remove files from a host (needs its delete_auth)",
        description="DELETE each SHA from the host (and its S3 bucket, when it has one); "
                    "prints '<sha>  <url>  204' per file removed. SHAs from the arguments or, "
                    "one per line, from stdin.")
    _common(delete)
    delete.add_argument("--auth", metavar="USER:PASS",
                        help="the host's delete_auth credentials (default: $STOR_DELETE_AUTH)")
    delete.add_argument("shas", nargs="*", metavar="SHA")
    delete.set_defaults(func=_delete)

    du = subparsers.add_parser(
        "du", help="used, total and free bytes of each storage of a host",
        description="Per storage of the host: used, total, free and use%%, from its JSON "
                    "/status (one statvfs per storage on the host; nothing is walked).")
    _common(du)
    du.set_defaults(func=_du)

    info = subparsers.add_parser(
        "info", help="a host at a glance: version, uptime, storages, S3 backlog",
        description="The host's version, uptime, health, per-storage space and S3 outbox "
                    "backlog, from its JSON /status.")
    _common(info)
    info.set_defaults(func=_info)


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

    def start(settings: Settings) -> int:
        files = _unique(list(expand_paths(args.files)))
        total = sum(_size(f) for f in files)
        return _run(lambda reactor: commands.put(reactor, settings, files, sys.stdout,
                                                 sys.stderr, sys.stderr.isatty(), total),
                    settings)
    return _guarded(args, start)


def expand_paths(paths: Iterable[str]) -> Iterable[str]:
    """Each path, a directory replaced by every file below it (in name order; symlinked
    directories are not followed, so a loop cannot make a put endless)."""
    for path in paths:
        if not os.path.isdir(path):
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            yield from (os.path.join(root, name) for name in sorted(files))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0  # the put itself reports why the file cannot be read


def _delete(args: argparse.Namespace) -> int:
    from stor.client import commands

    def start(settings: Settings) -> int:
        if settings.auth is None:
            raise UsageError("--auth (or STOR_DELETE_AUTH) must give the delete credentials")
        shas = _shas(args.shas, sys.stdin)
        return _run(lambda reactor: commands.delete(reactor, settings, shas, sys.stdout,
                                                    sys.stderr, sys.stderr.isatty()), settings)
    return _guarded(args, start)


def _du(args: argparse.Namespace) -> int:
    from stor.client import commands
    from stor.client.admin import du_lines

    return _guarded(args, lambda settings: _run(lambda reactor: commands.host_status(
        reactor, settings, sys.stdout, sys.stderr, du_lines), settings))


def _info(args: argparse.Namespace) -> int:
    from stor.client import commands
    from stor.client.admin import info_lines

    return _guarded(args, lambda settings: _run(lambda reactor: commands.host_status(
        reactor, settings, sys.stdout, sys.stderr,
        lambda doc: info_lines(settings.storage, doc)), settings))


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
    if hasattr(args, "auth"):  # put and delete send credentials; get and verify ignore them
        variable = "STOR_DELETE_AUTH" if args.command == "delete" else "STOR_AUTH"
        text = args.auth or environ.get(variable)
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
        raise UsageError("--auth must be USER:PASS")
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
        from stor.client.localfiles import drop_empty_parts

        drop_empty_parts()  # a signal during retries: no empty .part is left behind
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
