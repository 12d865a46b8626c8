"""``stor get`` and ``stor verify`` of one SHA: stream, hash as it comes, resume with Range.

``get`` writes into ``DIR/.<sha>.part`` (created, locked, and kept when the
item fails or the process is stopped) and renames it to ``DIR/<sha>`` only
once the whole file hashes to its name.  A ``.part`` found at start is hashed
first and the download asks only for the rest (``Range: bytes=N-``).

What the answer to a Range request makes us do:

* ``206`` whose ``Content-Range`` starts at N: append, go on.
* ``206`` starting elsewhere (or unreadable): nothing is written; the ``.part``
  is emptied and the next attempt starts from zero.
* ``200``: the server ignored Range; the ``.part`` is emptied and the whole
  body written from zero.
* ``416``: the ``.part`` is longer than the file: emptied, restart from zero.
* the complete file does not hash to its name: emptied, restart from zero
  (a counted failure; after ``--retries`` of them the item fails ``mismatch``).

``verify`` is the same stream into a hasher only; a mismatch fails at once
(that is what verify is for) and nothing is written to disk.
"""

import os
from collections.abc import Callable

from twisted.web.iweb import IResponse

from stor.client.errors import BadRange, ItemFailed, LocalFailure, Mismatch, ServerAnswer, Transient
from stor.client.localfiles import HashOnly, PartFile, hashes_to
from stor.client.report import Reporter, Result
from stor.client.retry import with_retries
from stor.client.session import Session, retry_after
from stor.client.sink import Sink, discard, read_text, receive
from stor.client.threads import in_thread
from stor.core.reactor import Reactor


def part_path(directory: str, sha: str) -> str:
    return os.path.join(directory, f".{sha}.part")


async def get_sha(session: Session, sha: str, directory: str, reporter: Reporter) -> Result:
    """Make ``directory/<sha>`` hold the file; never raises, the outcome is the result."""
    reactor = session.reactor
    final = os.path.join(directory, sha)
    if await in_thread(reactor, hashes_to, final, sha):
        return Result(sha, final, "present", True)
    try:
        writer = await in_thread(reactor, PartFile, part_path(directory, sha))
    except ItemFailed as e:
        return Result(sha, final, e.status, False, e.reason)
    except OSError as e:
        return Result(sha, final, "error", False, LocalFailure.from_os_error(e).reason)
    sink = Sink(reactor, writer, reporter.progress.add_bytes)
    expect = _once(reporter.progress.add_expected)
    try:
        if writer.size and writer.hexdigest() == sha:  # a complete .part, not yet renamed
            status = "present"
        else:
            status = await with_retries(reactor, session.settings.backoff,
                                        lambda: _fetch_once(session, sha, sink, True, expect),
                                        progress=lambda: sink.size)
        await sink.call(writer.commit, final)
    except ItemFailed as e:
        await _close_quietly(reactor, sink, writer)
        return Result(sha, final, e.status, False, e.reason)
    return Result(sha, final, status, True)


async def verify_sha(session: Session, sha: str, reporter: Reporter) -> Result:
    """Download ``sha`` and hash it without keeping it."""
    sink = Sink(session.reactor, HashOnly(), reporter.progress.add_bytes)
    expect = _once(reporter.progress.add_expected)
    url = session.settings.url(sha)
    try:
        status = await with_retries(session.reactor, session.settings.backoff,
                                    lambda: _fetch_once(session, sha, sink, False, expect),
                                    progress=lambda: sink.size)
    except ItemFailed as e:
        return Result(sha, url, e.status, False, e.reason)
    return Result(sha, url, status, True)


def _once(tell: Callable[[int], None]) -> Callable[[int], None]:
    """``tell``, called for the first transfer of an item only (a retry brings no new bytes
    to expect)."""
    told: list[int] = []

    def first(n: int) -> None:
        if not told:
            told.append(n)
            tell(n)
    return first


async def _fetch_once(session: Session, sha: str, sink: Sink, retry_mismatch: bool,
                      expect: Callable[[int], None]) -> str:
    """One request for the bytes ``sink`` lacks; the HTTP status once the file is complete."""
    offset = sink.size
    response = await session.get(sha, offset)
    total = await _accept(response, offset, sink)
    if total is not None:
        expect(total - sink.size)  # what this transfer brings
    await receive(session.reactor, response, sink, session.settings.timeout)
    if total is not None and sink.size < total:
        raise Transient(f"connection lost at byte {sink.size} of {total}")
    digest = await sink.hexdigest()
    if digest != sha:
        await sink.reset()
        raise Mismatch(f"the bytes received hash to {digest}", retryable=retry_mismatch)
    return str(response.code)


async def _accept(response: IResponse, offset: int, sink: Sink) -> int | None:
    """Decide what to do with the answer; the file's size when the answer tells it."""
    code = response.code
    if code == 200:
        if offset:
            await sink.reset()  # the server ignored Range: whole file, from zero
        return response.length if isinstance(response.length, int) else None
    if code == 206 and offset:
        raw = (response.headers.getRawHeaders(b"content-range") or [b""])[0]
        span = parse_content_range(raw)
        if span is None or span[0] != offset:
            await discard(response)
            await sink.reset()
            raise BadRange(f"asked for bytes {offset}- and got Content-Range {raw.decode('latin-1')!r}")
        return span[2]
    if code == 416 and offset:
        await discard(response)
        await sink.reset()
        raise BadRange(f"the .part held {offset} bytes, more than the file")
    raise ServerAnswer(code, await read_text(response), retry_after(response))


def parse_content_range(value: bytes) -> tuple[int, int, int | None] | None:
    """``bytes FIRST-LAST/SIZE`` as (first, last, size or None for ``*``); None when malformed."""
    try:
        unit, _, spec = value.decode("ascii").strip().partition(" ")
        span, _, size = spec.partition("/")
        first, _, last = span.partition("-")
        if unit.lower() != "bytes":
            return None
        result = (int(first), int(last), None if size.strip() == "*" else int(size))
    except ValueError:
        return None
    if result[0] < 0 or result[1] < result[0] or (result[2] is not None and result[1] >= result[2]):
        return None
    return result


async def _close_quietly(reactor: Reactor, sink: Sink, writer: PartFile) -> None:
    """Release the .part (kept when it holds bytes); this item's failure is already known."""
    try:
        await sink.idle()
    except ItemFailed:
        pass  # the writer failed: nothing is in flight
    try:
        await in_thread(reactor, writer.close)
    except OSError:
        pass
