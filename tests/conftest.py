"""Shared fixtures: throw-away storages and a stor site on a real loopback port."""

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import DatagramProtocol

from stor.config import Config, parse_config

# Fixture modules shared by several test files (peers started per test).
pytest_plugins = ["memcached_peer", "ops_peer", "log_peers", "s3write_peer", "fleet_peer",
                  "rgw_peer"]
from stor.process.service import build_daemon


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session", autouse=True)
def runtime_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every stor the tests start without a ``lock_dir`` keeps its locks in this run's own
    directory (as systemd's ``RuntimeDirectory=`` gives one), never in the host's
    ``/run/stor``, which an older build may have left world-writable (then refused)."""
    path = tmp_path_factory.mktemp("run")
    before = os.environ.get("RUNTIME_DIRECTORY")
    os.environ["RUNTIME_DIRECTORY"] = str(path)
    yield path
    if before is None:
        os.environ.pop("RUNTIME_DIRECTORY", None)
    else:
        os.environ["RUNTIME_DIRECTORY"] = before


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """moto's S3 server, a real HTTP endpoint checking signatures, for the whole session."""
    from s3_peer import start_moto

    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: Any) -> str:
    """A bucket no other test uses."""
    return moto.new_bucket()


@pytest.fixture
def storage_dirs(tmp_path: Path) -> list[list[str]]:
    """Two pairs of empty storage directories."""
    pairs = []
    for p in range(2):
        pair = []
        for m in range(2):
            d = tmp_path / f"data{2 * p + m + 1}"
            d.mkdir()
            pair.append(str(d))
        pairs.append(pair)
    return pairs


@pytest.fixture
def config_dict(storage_dirs: list[list[str]], tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config, as JSON would hold it; tests adjust it before starting."""
    return {
        "storage_pairs": storage_dirs,
        "basic_auth": "writer:writer_pass",
        "check_mounts": False,
        "listen": "tcp:0:interface=127.0.0.1",
        "lock_dir": str(tmp_path / "locks"),
    }


@dataclass
class Server:
    """A running stor site."""

    url: str
    config: Config
    port: Any

    def at(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"


@pytest_twisted.async_yield_fixture
async def start_server():
    """Start stor on a free loopback port with a given config dict; all stopped after."""
    started = []

    async def start(config_dict: dict[str, Any]) -> Server:
        config = parse_config(json.loads(json.dumps(config_dict)))
        daemon = build_daemon(config, reactor)
        daemon.services.startService()
        endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(daemon.site)
        started.append((port, daemon))
        return Server(f"http://127.0.0.1:{port.getHost().port}", config, port)

    yield start
    for port, daemon in started:
        await port.stopListening()
        await maybeDeferred(daemon.services.stopService)


@pytest_twisted.async_fixture
async def server(start_server, config_dict) -> Server:
    """stor with the default test config."""
    return await start_server(config_dict)


AUTH = ("writer", "writer_pass")


class Statsite(DatagramProtocol):
    """A UDP socket of the test's own that collects statsd lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.datagrams: list[bytes] = []
        self._waiters: list[tuple[str, int, Deferred[str]]] = []

    def datagramReceived(self, data: bytes, addr: object) -> None:
        self.datagrams.append(data)
        for line in data.decode().splitlines():
            self.lines.append(line)
        for waiter in list(self._waiters):
            pattern, count, d = waiter
            found = self._matching(pattern)
            if len(found) >= count:
                self._waiters.remove(waiter)
                d.callback(found[count - 1])

    def _matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.fullmatch(pattern, line)]

    def wait_for(self, pattern: str, timeout: float = 5.0, count: int = 1) -> "Deferred[str]":
        """The ``count``-th line (already seen or yet to come) matching ``pattern`` in full."""
        found = self._matching(pattern)
        if len(found) >= count:
            return _done(found[count - 1])
        d: Deferred[str] = Deferred()
        self._waiters.append((pattern, count, d))
        return d.addTimeout(timeout, reactor)


def _done(line: str) -> "Deferred[str]":
    d: Deferred[str] = Deferred()
    d.callback(line)
    return d


@pytest.fixture
def statsite():
    proto = Statsite()
    port = reactor.listenUDP(0, proto, interface="127.0.0.1")
    proto.port = port.getHost().port
    yield proto
    port.stopListening()



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


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory that cannot be written, even by root: a read-only tmpfs mount."""
    d = tmp_path / "readonly"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem (tmpfs), to fill up for real."""
    d = tmp_path / "tiny"
    d.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny filesystem needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)


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
    from twisted.internet.protocol import Protocol
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

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
