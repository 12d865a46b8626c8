"""``stor put`` of one file: hash it, ask ``HEAD`` whether it is stored, else stream it.

"Not stored" is a 404, or the 503 of a host whose S3 is down and whose disks
lack the file (``Stor-S3: unavailable``): both are answered by uploading.

treq sends a request body without waiting for ``100 Continue``, so asking
first is what keeps an already stored file from crossing the network again.
The body is read from disk in a thread as the socket takes it
(:func:`~stor.client.producer.file_producer`).

A 412 to the upload means the bytes that reached the server do not hash to
the SHA.  The bytes sent are hashed as they are read: when their hash is not
the one computed before, the file changed while it was being uploaded, and
the item fails (nothing is stored; upload it again once it is complete).
When it is the same, the bytes were damaged on the way and the upload is
retried like a 5xx.
"""

import os
import stat
from collections.abc import Callable

from twisted.web.iweb import IResponse

from stor.client.errors import FileChanged, ItemFailed, LocalFailure, ServerAnswer, Transient
from stor.client.localfiles import Reader, sha256_file
from stor.client.producer import close_reader, file_producer
from stor.client.report import Reporter, Result
from stor.client.retry import with_retries
from stor.client.session import Session, retry_after
from stor.client.sink import IdleTimer, discard, read_text
from stor.client.threads import in_thread


async def put_file(session: Session, path: str, reporter: Reporter) -> Result:
    """Store the file at ``path``; never raises, the outcome is the result."""
    reactor = session.reactor
    hashed = reporter.progress.add_hashed
    try:
        sha, size = await in_thread(reactor, _hash_regular_file, path,
                                    lambda n: reactor.callFromThread(hashed, n))
    except OSError as e:
        return Result("-", path, "error", False, e.strerror or str(e))
    try:
        status = await with_retries(session.reactor, session.settings.backoff,
                                    lambda: _put_once(session, path, sha, size, reporter))
    except ItemFailed as e:
        return Result(sha, path, e.status, False, e.reason)
    return Result(sha, path, status, True)


def _hash_regular_file(path: str, on_chunk: Callable[[int], None]) -> tuple[str, int]:
    """Only a regular file: a FIFO or a device would block the read (or never end)."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a directory", path)
    if not stat.S_ISREG(mode):
        raise OSError(22, "not a regular file", path)
    return sha256_file(path, on_chunk)


async def _put_once(session: Session, path: str, sha: str, size: int, reporter: Reporter) -> str:
    head = await session.head(sha)
    if head.code == 200:
        await discard(head)
        reporter.progress.add_bytes(size)  # nothing to send: counted as sent
        return "200"
    if head.code != 404 and not _missing_here(head):
        raise ServerAnswer(head.code, await read_text(head), retry_after(head))
    await discard(head)
    try:
        reader = await in_thread(session.reactor, Reader, path, size)
    except OSError as e:
        raise LocalFailure.from_os_error(e) from None
    response = await _post(session, sha, reader, reporter)
    detail = await read_text(response)
    if response.code in (200, 201):
        return str(response.code)
    if response.code == 412 and reader.position == size and reader.sent_sha() != sha:
        raise FileChanged(f"file changed while uploading (sent bytes hash to {reader.sent_sha()}); "
                          "nothing stored", status="412")
    answer = ServerAnswer(response.code, detail, retry_after(response))
    if response.code == 412:
        answer.retryable = True  # the file is as hashed: the bytes were damaged on the way
    raise answer


def _missing_here(head: IResponse) -> bool:
    """A 503 ``Stor-S3: unavailable``: not on that host, and its S3 cannot say.

    Uploading settles it: the host answers 200 if the file is there after all,
    else stores it (docs/fleet-operations.rst).
    """
    return head.code == 503 and head.headers.getRawHeaders(b"stor-s3") == [b"unavailable"]


async def _post(session: Session, sha: str, reader: Reader, reporter: Reporter) -> IResponse:
    """POST the file, cancelled when no byte moves for ``timeout`` seconds."""
    timeout = session.settings.timeout
    timer = IdleTimer(session.reactor, timeout, lambda: d.cancel())

    def sent(n: int) -> None:
        timer.kick()
        reporter.progress.add_bytes(n)

    producer = file_producer(session.reactor, reader, sent)
    d = session.post(sha, producer)
    timer.start()
    try:
        return await d
    except Transient:
        if timer.fired:
            raise Transient(f"upload stalled: nothing moved for {timeout:g} s") from None
        raise
    finally:
        timer.stop()
        await close_reader(session.reactor, reader)

