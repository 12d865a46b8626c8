"""Small helpers every tier's tests use: hashes, bitrot, files on the storages,
raw HTTP requests."""

import hashlib
import os
from pathlib import Path

from twisted.internet import reactor

AUTH = ("writer", "writer_pass")
"""The credentials every test config gives stor (``basic_auth``)."""
AUTH_HEADER = "Basic d3JpdGVyOndyaXRlcl9wYXNz"  # writer:writer_pass
MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``: the name stor stores it under."""
    return hashlib.sha256(data).hexdigest()


def file_sha(path: str | Path) -> str:
    """The hex SHA-256 of a file, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def flip(path: str | Path, offset: int = 0) -> None:
    """Bitrot: every bit of one byte of ``path`` flips, and its mtime does not change."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def dat_files(root: str | Path) -> list[str]:
    """Every ``.dat`` file below ``root``."""
    return sorted(str(p) for p in Path(root).rglob("*.dat"))


def temp_files(storage_dirs: list[list[str]]) -> list[str]:
    """Every file in any storage's temp dir (but the health probe's, which comes and goes
    every ``probe_period`` whatever the uploads do)."""
    found = []
    for pair in storage_dirs:
        for s in pair:
            t = Path(s) / ".stor-tmp"
            if t.is_dir():
                found += [str(p) for p in t.iterdir() if not p.name.startswith(".probe.")]
    return found


async def raw_request(method: str, url: str, headers: dict[str, str] | None = None):
    """(response, body) through a bare Agent: treq's gzip wrapper drops Content-Length."""
    from twisted.web.client import Agent, readBody
    from twisted.web.http_headers import Headers

    agent = Agent(reactor)
    hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
    response = await agent.request(method.encode(), url.encode(), hdrs)
    body = b"" if method == "HEAD" else await readBody(response)
    return response, body


async def raw_http(url: str, request: bytes) -> bytes:
    """Send ``request`` as is and return every byte the server answers until it closes."""
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Collect(Protocol):
        def __init__(self) -> None:
            self.data = b""
            self.done: Deferred[bytes] = Deferred()

        def connectionMade(self) -> None:
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            self.data += data

        def connectionLost(self, reason: object) -> None:
            self.done.callback(self.data)

    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    proto = Collect()
    await connectProtocol(TCP4ClientEndpoint(reactor, host, int(port)), proto)
    return await proto.done


def remove_storage(storage: str) -> None:
    """Take a storage away (a disk gone).  stor's write probe may be creating or removing
    its file in ``.stor-tmp`` at that very moment: try again until the directory is gone."""
    import shutil

    for _ in range(50):
        try:
            shutil.rmtree(storage)
            return
        except OSError:
            if not os.path.exists(storage):
                return
    raise AssertionError(f"{storage} could not be removed")
