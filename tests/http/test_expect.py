"""Expect: 100-continue — uploads that will be refused are answered before the body.

curl sends ``Expect: 100-continue`` for bodies over 1 MiB.  A relay of the
test's own in front of stor counts the bytes the client really sent.
"""

import os
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor, threads
from twisted.protocols import portforward

from support.helpers import dat_files, sha256

pytestmark = pytest.mark.acceptance('process')

BIG = 50 * 1024 * 1024
MiB = 1024 * 1024


class _Counting(portforward.ProxyServer):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        super().dataReceived(data)


class CountingRelay(portforward.ProxyFactory):
    """Forwards to stor and counts what clients send through it."""

    protocol = _Counting

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.received = 0


@pytest_twisted.async_yield_fixture
async def relay_to():
    ports = []

    async def start(server) -> tuple[CountingRelay, str]:
        factory = CountingRelay("127.0.0.1", server.port.getHost().port)
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        ports.append(port)
        return factory, f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in ports:
        await port.stopListening()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "f"
    with open(path, "wb") as f:
        for _ in range(BIG // MiB):
            f.write(os.urandom(MiB))
    with open(path, "rb") as f:
        import hashlib
        return path, hashlib.file_digest(f, "sha256").hexdigest()


def curl_post(url: str, path: Path, user: str = "writer:writer_pass") -> tuple[int, str]:
    out = subprocess.run(
        ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "-u", user,
         "--data-binary", f"@{path}", url],
        capture_output=True, timeout=60, check=True, text=True)
    return int(out.stdout), out.stderr


async def post(url: str, path: Path, user: str = "writer:writer_pass") -> tuple[int, str]:
    return await threads.deferToThread(curl_post, url, path, user)


@pytest_twisted.ensureDeferred
async def test_wrong_credentials_get_401_before_the_body(server, relay_to, big_file):
    relay, url = await relay_to(server)
    path, sha = big_file
    code, log = await post(f"{url}/{sha}", path, "writer:wrong")
    assert code == 401
    assert "100 Continue" not in log
    assert relay.received < MiB


@pytest_twisted.ensureDeferred
async def test_duplicate_gets_200_before_the_body(server, relay_to, big_file, storage_dirs):
    relay, url = await relay_to(server)
    path, sha = big_file
    code, _ = await post(f"{server.url}/{sha}", path)
    assert code == 201
    code, log = await post(f"{url}/{sha}", path)
    assert code == 200
    assert relay.received < MiB


@pytest_twisted.ensureDeferred
async def test_too_large_gets_413_before_the_body(start_server, config_dict, relay_to, big_file):
    config_dict["max_upload_size"] = 10 * MiB
    server = await start_server(config_dict)
    relay, url = await relay_to(server)
    path, sha = big_file
    code, _ = await post(f"{url}/{sha}", path)
    assert code == 413
    assert relay.received < MiB


@pytest_twisted.ensureDeferred
async def test_no_room_gets_507_and_malformed_412_before_the_body(
        start_server, config_dict, relay_to, big_file):
    config_dict["writable_pairs_regex"] = "^$"
    server = await start_server(config_dict)
    relay, url = await relay_to(server)
    path, sha = big_file
    code, _ = await post(f"{url}/{sha}", path)
    assert code == 507
    code, _ = await post(f"{url}/not-a-sha", path)
    assert code == 412
    assert relay.received < 2 * MiB


@pytest_twisted.ensureDeferred
async def test_an_accepted_upload_gets_100_continue_and_is_stored(server, relay_to, big_file,
                                                                  storage_dirs):
    relay, url = await relay_to(server)
    path, sha = big_file
    code, log = await post(f"{url}/{sha}", path)
    assert code == 201
    assert "HTTP/1.1 100 Continue" in log
    assert relay.received >= BIG
    files = dat_files(Path(storage_dirs[0][0]).parent)
    assert len(files) == 2 and all(os.path.getsize(f) == BIG for f in files)
    assert sha256(Path(files[0]).read_bytes()) == sha
