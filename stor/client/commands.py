"""The commands: many items, ``settings.parallel`` at a time, one result line each.

Each returns the exit status: 0 when every item succeeded, 1 when any failed
(usage errors, 2, are the command line's business: ``stor.cli.client``).
"""

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TextIO, TypeVar

from twisted.internet.defer import ensureDeferred, gatherResults

from stor.client.admin import delete_sha, print_lines, status_document
from stor.client.download import get_sha, verify_sha
from stor.client.errors import ItemFailed
from stor.client.progress import Progress
from stor.client.report import Reporter, Result
from stor.client.session import Session
from stor.client.settings import Settings
from stor.client.upload import put_file
from stor.core.reactor import Reactor

T = TypeVar("T")


async def put(reactor: Reactor, settings: Settings, paths: list[str], out: TextIO, err: TextIO,
              show_progress: bool, total_bytes: int | None = None) -> int:
    """Upload every file in ``paths`` (``total_bytes``: their sizes, for the progress bar)."""
    return await _run(reactor, settings, "put", paths, out, err, show_progress,
                      lambda session, reporter, path: put_file(session, path, reporter),
                      total_bytes)


async def delete(reactor: Reactor, settings: Settings, shas: list[str], out: TextIO, err: TextIO,
                 show_progress: bool) -> int:
    """Remove every SHA from the host (``DELETE`` with its ``delete_auth`` credentials)."""
    return await _run(reactor, settings, "delete", shas, out, err, show_progress,
                      lambda session, reporter, sha: delete_sha(session, sha, reporter))


async def host_status(reactor: Reactor, settings: Settings, out: TextIO, err: TextIO,
                      render: Callable[[dict[str, Any]], list[str]]) -> int:
    """``du`` and ``info``: the host's JSON ``/status``, rendered; 1 when it cannot be read."""
    session = Session(reactor, settings)
    try:
        doc = await status_document(session)
    except ItemFailed as e:
        err.write(f"stor: {settings.storage}: {e.reason}\n")
        return 1
    finally:
        await session.close()
    print_lines(out, render(doc))
    return 0


async def get(reactor: Reactor, settings: Settings, shas: list[str], directory: str, out: TextIO,
              err: TextIO, show_progress: bool) -> int:
    """Download every SHA into ``directory``."""
    return await _run(reactor, settings, "get", shas, out, err, show_progress,
                      lambda session, reporter, sha: get_sha(session, sha, directory, reporter))


async def verify(reactor: Reactor, settings: Settings, shas: list[str], out: TextIO, err: TextIO,
                 show_progress: bool) -> int:
    """Download and hash every SHA, keeping nothing."""
    return await _run(reactor, settings, "verify", shas, out, err, show_progress,
                      lambda session, reporter, sha: verify_sha(session, sha, reporter))


async def _run(reactor: Reactor, settings: Settings, label: str, items: list[str], out: TextIO,
               err: TextIO, show_progress: bool,
               one: Callable[[Session, Reporter, str], Awaitable[Result]],
               total_bytes: int | None = None) -> int:
    session = Session(reactor, settings)
    progress = Progress(reactor, err, label, len(items), show_progress,
                        total_bytes=total_bytes)
    reporter = Reporter(out, err, progress)

    async def item(name: str) -> None:
        reporter.report(await one(session, reporter, name))

    progress.start()
    try:
        await run_all(items, settings.parallel, item)
    finally:
        progress.stop()
        await session.close()
    return reporter.exit_status()


async def run_all(items: Iterable[T], parallel: int, fn: Callable[[T], Awaitable[None]]) -> None:
    """``fn`` on every item, at most ``parallel`` at a time, taking items in order.

    ``parallel`` workers share one iterator, so a million items cost a million
    results, not a million waiting Deferreds.
    """
    pending = iter(items)

    async def worker() -> None:
        for one in pending:
            await fn(one)

    await gatherResults([ensureDeferred(worker()) for _ in range(max(1, parallel))],
                        consumeErrors=True)
