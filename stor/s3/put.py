"""Putting local files into the S3 bucket, verified by the store and by us.

Every PUT is signed with ``X-Amz-Content-SHA256`` set to the SHA-256 of the
bytes it carries: for a single PUT that is the file's own name, for a
multipart upload each part's own hash.  A SigV4 store (AWS, Ceph RGW, MinIO)
recomputes it and refuses a body that does not match, so an object in the
bucket is always the file its key names.  We also hash the local file while
reading it, and a file that does not hash to its name is never sent whole:
the last chunk is held back, the request is aborted and
:class:`CorruptLocalFile` is raised, so the caller can quarantine that
replica and use its twin.

The body is streamed from the committed local file by :func:`file_slice`
(the shared :class:`~stor.core.slices.VerifiedSlice`),
which reads in chunks on the disk pool (never on the reactor) as fast as the
connection takes them: memory stays at one chunk per upload whatever the file
size.  Files of ``multipart_threshold`` bytes or more go as a multipart
upload; each part is read twice (once to learn its hash, which must be signed
before the part is sent, then again while sending it, from the page cache
usually) so no part is ever held in memory.

Every failure is an exception with a meaning: :class:`CorruptLocalFile` (the
local replica is rotten), :class:`S3WriteError` with ``retryable`` (a network
problem, a timeout, a 5xx or SlowDown: try again later) or not (a refused
signature, a missing bucket, a 4xx: try again later too, but someone must
look), and ``OSError`` for a local file that cannot be read.
"""

import hashlib
import os
import re
import stat
from collections.abc import Callable
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from stor.config import S3Config
from stor.core import layout
from stor.core.reactor import Connection
from stor.core.slices import VerifiedSlice
from stor.disk.anchored import SymlinkRefused, open_file_at
from stor.s3.sign import Signer

log = Logger()

CHUNK = 256 * 1024  # bytes read from disk and written to the connection at a time
MULTIPART_THRESHOLD = 64 * 1024 * 1024  # files this large or larger go in parts
PART_SIZE = 16 * 1024 * 1024  # S3: at least 5 MiB (but the last), at most 10,000 parts
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * 1024 * 1024
BODY_LIMIT = 64 * 1024  # an answer body larger than this is not S3 talking to us

Runner = Callable[..., "Deferred[Any]"]
"""Runs a blocking callable off the reactor: ``DiskPool.run`` or ``deferToThread``."""
Pace = Callable[[int], None]
"""Called in the reading thread with each chunk's size; may sleep (``--max-mbps``)."""


class CorruptLocalFile(Exception):
    """The local replica at ``path`` does not hash to its name: it was not uploaded."""

    def __init__(self, path: str, expected: str, actual: str, detail: str = "") -> None:
        super().__init__(f"{path}: " + (detail or f"hashes to {actual}, not {expected}"))
        self.path = path
        self.expected = expected
        self.actual = actual


class S3WriteError(Exception):
    """S3 did not take the object.  ``retryable``: the cause is likely to pass
    (network, timeout, 5xx, SlowDown); otherwise it is a refusal someone must
    look at (signature, permissions, missing bucket), retried all the same."""

    def __init__(self, message: str, retryable: bool, status: int | None = None,
                 code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code


def object_url(config: S3Config, sha: str) -> str:
    """The path-style URL of ``sha``'s object (the read path's key scheme)."""
    return f"{config.endpoint}/{quote(config.bucket, safe='')}/{layout.s3_key(sha)}"


def part_ranges(size: int, part_size: int) -> list[tuple[int, int]]:
    """(offset, length) of each part: ``part_size`` each, grown to stay within 10,000 parts."""
    per_part = max(part_size, MIN_PART_SIZE, -(-size // MAX_PARTS))
    return [(offset, min(per_part, size - offset)) for offset in range(0, size, per_part)]


# -- reading the local file ----------------------------------------------------


def open_local(path: str) -> int:
    """Blocking: a read-only descriptor of the stored file ``path``, never through a link.

    A root ``stor s3-sync`` on storages owned by root reads what the daemon's
    user may have replaced by a link (to a root-only file named by its SHA-256,
    so the put would verify): :class:`~stor.disk.anchored.SymlinkRefused`.
    """
    return open_file_at(None, path, os.O_RDONLY, path)


def local_size(path: str) -> int:
    """Blocking: the size of the stored file ``path`` (a link is refused, not followed)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkRefused(path)
    return st.st_size


def hash_range(path: str, offset: int, length: int, whole: "Any | None" = None,
               pace: Pace | None = None, chunk: int = CHUNK) -> str:
    """Blocking: the hex SHA-256 of ``length`` bytes of ``path`` at ``offset``.

    Also feeds them to ``whole`` (a hashlib object for the whole file) when
    given.  A file shorter than that is :class:`CorruptLocalFile`.
    """
    part = hashlib.sha256()
    with open(open_local(path), "rb", buffering=0) as f:
        done = 0
        while done < length:
            data = os.pread(f.fileno(), min(chunk, length - done), offset + done)
            if not data:
                raise CorruptLocalFile(path, "", "", f"ends at byte {offset + done}, "
                                       f"expected {offset + length}")
            part.update(data)
            if whole is not None:
                whole.update(data)
            if pace is not None:
                pace(len(data))
            done += len(data)
    return part.hexdigest()


def file_slice(path: str, offset: int, length: int, expected: str, run: Runner,
               pace: Pace | None = None, chunk: int = CHUNK) -> VerifiedSlice:
    """A request body: ``length`` bytes of ``path`` from ``offset``, verified.

    The shared :class:`~stor.core.slices.VerifiedSlice` reads chunks with
    ``run`` (off the reactor) one at a time, only while the connection wants
    more.  The bytes are hashed as they go; the chunk that completes the slice
    is written only if the slice hashes to ``expected``, otherwise the body
    fails with :class:`CorruptLocalFile` (kept in its ``failure``) and twisted
    aborts the request: the store never receives a whole wrong body.
    """
    source = _LocalRange(path, offset + length, expected, run, pace)
    return VerifiedSlice(source, offset, length, chunk=chunk, expected=expected)


class _LocalRange:
    """The local file read in the disk pool (opened on the first read), paced."""

    def __init__(self, path: str, end: int, expected: str, run: Runner,
                 pace: Pace | None) -> None:
        self._path, self._end, self._expected = path, end, expected
        self._run, self._pace = run, pace
        self._fd: int | None = None

    def read_nowait(self, offset: int, size: int) -> None:
        return None  # a sync to S3 reads at its own pace, in the pool

    def read(self, offset: int, size: int) -> "Deferred[bytes]":
        d: Deferred[bytes] = self._run(self._read, offset, size)
        return d

    def _read(self, offset: int, size: int) -> bytes:
        """In a thread: one chunk (the file is opened on the first)."""
        if self._fd is None:
            self._fd = open_local(self._path)
        data = os.pread(self._fd, size, offset)
        if self._pace is not None:
            self._pace(len(data))
        return data

    def ended_early(self, offset: int) -> BaseException:
        return CorruptLocalFile(self._path, self._expected, "",
                                f"ends at byte {offset}, expected {self._end}")

    def corrupt(self, actual: str) -> BaseException:
        return CorruptLocalFile(self._path, self._expected, actual)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # a read-only fd: closing it does not wait for the disk


# -- the writer ----------------------------------------------------------------


class S3Writer:
    """HEADs and PUTs objects in one bucket; see the module docstring."""

    def __init__(self, config: S3Config, client: HTTPClient, reactor: IReactorTime,
                 run: Runner, multipart_threshold: int = MULTIPART_THRESHOLD,
                 part_size: int = PART_SIZE) -> None:
        self._config = config
        self._client = client
        self._reactor = reactor
        self._run = run
        self._signer = Signer(config.access_key, config.secret_key, config.region)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size

    def url(self, sha: str) -> str:
        return object_url(self._config, sha)

    def exists(self, sha: str) -> "Deferred[bool]":
        """Whether the bucket has ``sha``'s object (HEAD: 200 True, 404 False, else
        :class:`S3WriteError`)."""
        return ensureDeferred(self._exists(sha.lower()))

    def put_file(self, sha: str, path: str, pace: Pace | None = None) -> "Deferred[int]":
        """Upload the local file ``path`` as ``sha``'s object; fires with its size.

        Fails with :class:`CorruptLocalFile` (nothing was stored),
        :class:`S3WriteError` or ``OSError``.  ``pace`` is called with each
        chunk read (in the reading thread), to limit the read rate.
        """
        return ensureDeferred(self._put_file(sha.lower(), path, pace))

    def delete(self, sha: str) -> "Deferred[None]":
        """Remove ``sha``'s object (DELETE /<sha>); :class:`S3WriteError` if refused."""
        return ensureDeferred(self._delete(sha.lower()))

    # -- internals --------------------------------------------------------------

    async def _delete(self, sha: str) -> None:
        url = self.url(sha)
        response, body = await self._send("DELETE", url, self._signer.headers("DELETE", url))
        if response.code not in (200, 204, 404):
            raise _refusal("DELETE", url, response, body)

    async def _exists(self, sha: str) -> bool:
        url = self.url(sha)
        response, body = await self._send("HEAD", url, self._signer.headers("HEAD", url))
        if response.code == 200:
            return True
        if response.code == 404:
            return False
        raise _refusal("HEAD", url, response, body)

    async def _put_file(self, sha: str, path: str, pace: Pace | None) -> int:
        size = await self._run(local_size, path)
        if size >= self.multipart_threshold:
            await self._put_multipart(sha, path, size, pace)
        else:
            await self._put_single(sha, path, size, pace)
        return int(size)

    async def _put_single(self, sha: str, path: str, size: int, pace: Pace | None) -> None:
        url = self.url(sha)
        body = file_slice(path, 0, size, sha, self._run, pace)
        headers = self._signer.headers("PUT", url, sha)
        response, answer = await self._send("PUT", url, headers, body)
        if response.code != 200:
            raise _refusal("PUT", url, response, answer)

    async def _put_multipart(self, sha: str, path: str, size: int, pace: Pace | None) -> None:
        url = self.url(sha)
        upload_id = await self._create(url)
        try:
            parts = await self._put_parts(sha, path, size, url, upload_id, pace)
            await self._complete(url, upload_id, parts)
        except BaseException:
            await self._abort(url, upload_id)
            raise

    async def _put_parts(self, sha: str, path: str, size: int, url: str, upload_id: str,
                         pace: Pace | None) -> list[tuple[int, str]]:
        """Each part hashed (and the whole file with it), then sent signed with its hash.

        The whole file's hash is known once the last part has been read the
        first time, so a rotten file is caught before its last part is sent.
        """
        whole = hashlib.sha256()
        ranges = part_ranges(size, self.part_size)
        parts: list[tuple[int, str]] = []
        for number, (offset, length) in enumerate(ranges, start=1):
            try:
                part_sha = await self._run(hash_range, path, offset, length, whole, pace)
            except CorruptLocalFile as e:  # cut short
                raise CorruptLocalFile(path, sha, "", str(e).split(": ", 1)[-1]) from None
            if number == len(ranges) and whole.hexdigest() != sha:
                raise CorruptLocalFile(path, sha, whole.hexdigest())
            part_url = f"{url}?partNumber={number}&uploadId={quote(upload_id, safe='')}"
            body = file_slice(path, offset, length, part_sha, self._run, pace)
            headers = self._signer.headers("PUT", part_url, part_sha)
            response, answer = await self._send("PUT", part_url, headers, body)
            etag = (response.headers.getRawHeaders(b"etag") or [b""])[0].decode("latin-1")
            if response.code != 200 or not etag:
                raise _refusal(f"PUT part {number} of", url, response, answer)
            parts.append((number, etag))
        return parts

    async def _create(self, url: str) -> str:
        create_url = f"{url}?uploads"
        response, body = await self._send("POST", create_url,
                                          self._signer.headers("POST", create_url))
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
        if response.code != 200 or not found:
            raise _refusal("create multipart upload", url, response, body)
        return found.group(1).decode("utf-8")

    async def _complete(self, url: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(etag)}</ETag></Part>"
                      for n, etag in parts)
        payload = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
        done_url = f"{url}?uploadId={quote(upload_id, safe='')}"
        headers = self._signer.headers("POST", done_url, hashlib.sha256(payload).hexdigest(),
                                       {"Content-Type": "application/xml"})
        response, body = await self._send("POST", done_url, headers, payload)
        # S3 may answer 200 and still fail: the error is then in the body
        if response.code != 200 or b"<Error>" in body:
            raise _refusal("complete multipart upload", url, response, body, b"<Error>" in body)

    async def _abort(self, url: str, upload_id: str) -> None:
        """Best effort: a part left behind costs storage until a lifecycle rule ends it."""
        abort_url = f"{url}?uploadId={quote(upload_id, safe='')}"
        try:
            response, body = await self._send("DELETE", abort_url,
                                              self._signer.headers("DELETE", abort_url))
            if response.code not in (204, 200, 404):
                raise _refusal("abort multipart upload", url, response, body)
        except Exception as e:  # the original error is the one that matters
            log.warn("S3 multipart upload {upload_id} of {url} not aborted: {why}",
                     upload_id=upload_id, url=url, why=e)

    async def _send(self, method: str, url: str, headers: Headers,
                    body: "VerifiedSlice | bytes | None" = None) -> tuple[IResponse, bytes]:
        """One request; S3WriteError(retryable) for network failures and stalls.

        ``config.timeout`` bounds every wait for progress (connecting, each
        chunk taken by the connection, the answer), not the whole transfer: a
        large file may take minutes, a stalled one is given up quickly.
        """
        timeout = self._config.timeout
        request = self._client.request(method, url, headers=headers, data=body,
                                       allow_redirects=False, unbuffered=True)
        watchdog = self._reactor.callLater(timeout, request.cancel)
        if isinstance(body, VerifiedSlice):
            body.on_chunk = lambda n: watchdog.reset(timeout) if watchdog.active() else None
        try:
            response: IResponse = await request
            answer = await _read_body(response, self._reactor, timeout)
        except Exception as e:
            local = body.failure if isinstance(body, VerifiedSlice) else None
            if local is not None:
                raise local from None
            raise S3WriteError(f"S3 {method} {url} failed: {_describe(e, timeout)}",
                               retryable=True) from None
        finally:
            if watchdog.active():
                watchdog.cancel()
        return response, answer


async def _read_body(response: IResponse, reactor: IReactorTime, timeout: float) -> bytes:
    """A short answer body, whole; a longer one is cut off (it is not S3's)."""
    if isinstance(response.length, int) and response.length > BODY_LIMIT:
        response.deliverBody(_Discard())
        return b""
    reading = readBody(response)
    reading.addTimeout(timeout, reactor)
    return bytes(await reading)


class _Discard(Protocol):
    """Closes the connection of an answer too long to read."""

    transport: Connection  # set before dataReceived

    def connectionMade(self) -> None:
        self.transport.stopProducing()


def _refusal(what: str, url: str, response: IResponse, body: bytes,
             error_body: bool = False) -> S3WriteError:
    code = _error_code(body)
    status = response.code
    retryable = (status >= 500 or status in (408, 429) or error_body
                 or code in ("SlowDown", "RequestTimeout", "InternalError"))
    phrase = response.phrase.decode("latin-1")
    return S3WriteError(f"S3 {what} {url} answered {status} {phrase}"
                        + (f" ({code})" if code else ""), retryable, status, code)


def _describe(error: BaseException | None, timeout: float) -> str:
    """One short human line for a failed request."""
    if isinstance(error, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed,
                          RequestGenerationFailed)):
        inner = [r.value for r in error.reasons if isinstance(r, Failure)]
        if inner:
            return _describe(inner[0], timeout)
    if isinstance(error, (CancelledError, TxTimeoutError)):
        return f"no progress within {timeout:g}s"
    if isinstance(error, (ConnectError, DNSLookupError)):
        return f"cannot connect: {error}"
    return f"{type(error).__name__}: {error}"


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body, if there is one."""
    found = re.search(rb"<Code>([^<]{1,100})</Code>", body)
    return found.group(1).decode("utf-8", "replace") if found else ""
