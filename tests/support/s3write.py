"""Helpers for the S3 write-through tests: files, writers, a byte-counting sink.

- :func:`make_file`: a real ``.dat`` file at its layout path, named by its SHA.
- :func:`stored_sha`: read an object back from moto and hash it (moto does
  not check ``x-amz-content-sha256``, so the tests check the bytes).
- :class:`Sink`: a loopback TCP server that reads requests and never answers,
  counting the body bytes that reached it, for "aborted before the last byte".
- fixtures ``disk_pool`` and ``make_writer`` (writers with their own
  connection pools, closed after the test).
"""

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from botocore.exceptions import ClientError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from support.s3 import MotoS3
from stor.config import S3Config
from stor.core import layout
from stor.disk.diskpool import DiskPool
from stor.s3.read import s3_client
from stor.s3.put import S3Writer

MiB = 1024 * 1024
WAIT = 30.0


def bounded(d: "Deferred[Any]", seconds: float = WAIT) -> "Deferred[Any]":
    """``d``, failing instead of hanging the suite if it never fires."""
    return d.addTimeout(seconds, reactor)


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ from file to file (seeded), cheap to make."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def write_big(path: Path, size: int, seed: int = 0) -> str:
    """Write ``size`` bytes to ``path`` in 1 MiB chunks; returns their SHA-256."""
    h = hashlib.sha256()
    chunk = os.urandom(MiB) if seed < 0 else pattern(MiB, seed)
    with open(path, "wb") as f:
        written = 0
        n = 0
        while written < size:
            data = (chunk[n % 251:] + chunk[:n % 251])[:size - written]  # every MiB differs
            f.write(data)
            h.update(data)
            written += len(data)
            n += 1
    return h.hexdigest()


def make_file(storage: str | Path, data: bytes, sha: str | None = None) -> tuple[str, str]:
    """Place ``data`` in ``storage`` under its SHA (or under ``sha``: a corrupt file)."""
    name = sha or hashlib.sha256(data).hexdigest()
    path = layout.file_path(str(storage), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return name, path


def place_big(storage: str | Path, size: int, seed: int = 0) -> tuple[str, str]:
    """A ``size``-byte file at its layout path in ``storage``, written in chunks."""
    tmp = Path(storage) / f"big-{seed}.tmp"
    sha = write_big(tmp, size, seed)
    path = layout.file_path(str(storage), sha)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.rename(tmp, path)
    return sha, path


def stored_sha(moto: MotoS3, bucket: str, sha: str) -> str | None:
    """The SHA-256 of the object under ``sha``'s key, read back in chunks; None if absent."""
    try:
        answer = moto.client().get_object(Bucket=bucket, Key=layout.s3_key(sha))
    except ClientError as e:
        if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    h = hashlib.sha256()
    for chunk in answer["Body"].iter_chunks(MiB):
        h.update(chunk)
    return h.hexdigest()


def open_uploads(moto: MotoS3, bucket: str) -> list[Any]:
    """Multipart uploads started and neither completed nor aborted."""
    return moto.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def s3_config(moto: MotoS3, bucket: str, **kw: Any) -> S3Config:
    settings = dict(access_key=moto.access_key, secret_key=moto.secret_key,
                    endpoint=moto.endpoint, bucket=bucket, timeout=10.0)
    settings.update(kw)
    return S3Config(**settings)


@pytest.fixture
def disk_pool() -> Any:
    pool = DiskPool(reactor, size=4, name="test-disk")
    pool.start()
    yield pool
    pool.stop()


@pytest_twisted.async_yield_fixture
async def make_writer(disk_pool: DiskPool):
    """Build S3Writers with their own connection pools, all closed afterwards."""
    pools: list[HTTPConnectionPool] = []

    def make(config: S3Config, **kw: Any) -> S3Writer:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pools.append(pool)
        return S3Writer(config, s3_client(config, reactor, pool), reactor, disk_pool.run, **kw)

    yield make
    for pool in pools:
        await pool.closeCachedConnections()


class _SinkProtocol(Protocol):
    factory: "Sink"

    def connectionMade(self) -> None:
        self.head = b""
        self.body = 0

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" not in self.head:
            self.head += data
            if b"\r\n\r\n" in self.head:
                self.head, rest = self.head.split(b"\r\n\r\n", 1)
                self.factory.heads.append(self.head)
                self.body += len(rest)
                self.head += b"\r\n\r\n"
            return
        self.body += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.bodies.append(self.body)
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(self.body)


class Sink(Factory):
    """Reads every request, never answers; remembers how much body each connection sent."""

    protocol = _SinkProtocol

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.bodies: list[int] = []
        self.waiting: list[Deferred[int]] = []

    def closed(self) -> "Deferred[int]":
        """Fires with the body bytes of the next connection to close."""
        d: Deferred[int] = Deferred()
        self.waiting.append(d)
        return d


Run = Callable[..., "Deferred[Any]"]
