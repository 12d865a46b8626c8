"""A real memcached for tests: started on a free loopback port, killed and restarted at will.

Import the fixtures into a test module (``from memcached_peer import memcached,
memcached_peers``); every peer a test started is killed when it ends.
"""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

HOST = "127.0.0.1"


def memcached_binary() -> str | None:
    """The memcached executable (``make install-test`` installs it), or None."""
    found = shutil.which("memcached")
    if found:
        return found
    return "/usr/bin/memcached" if os.access("/usr/bin/memcached", os.X_OK) else None


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def answers(address: tuple[str, int], timeout: float = 0.2) -> bool:
    """Whether a memcached at ``address`` answers ``version``."""
    try:
        with socket.create_connection(address, timeout=timeout) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION ")
    except OSError:
        return False


class MemcachedPeer:
    """One memcached process on a fixed port, so a restart comes back at the same address."""

    def __init__(self, binary: str, port: int) -> None:
        self.binary = binary
        self.host = HOST
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 5.0) -> "MemcachedPeer":
        """Start memcached (TCP only, 16 MiB) and return once it answers."""
        argv = [self.binary, "-l", self.host, "-p", str(self.port), "-U", "0", "-m", "16"]
        if os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root unless told whom to be
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_answering(timeout)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would; the port is free again when this returns."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> "MemcachedPeer":
        """Kill (if running) and start again on the same port, empty."""
        self.kill()
        return self.start()

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not answers(self.address):
            assert self.process is not None
            if self.process.poll() is not None:
                stderr = self.process.stderr
                error = stderr.read().decode(errors="replace") if stderr else ""
                self.process = None
                raise RuntimeError(f"memcached exited at start: {error.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"memcached did not answer on port {self.port} in {timeout} s")
            time.sleep(0.01)  # polling with a deadline: a process start has no event to await


@pytest.fixture
def memcached_peers() -> Iterator[Callable[[], MemcachedPeer]]:
    """A factory of running memcached peers on free ports; all killed after the test."""
    binary = memcached_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("memcached is not installed: `make test` should have installed it")
        pytest.skip("memcached is not installed (run `make install-test`)")
    started: list[MemcachedPeer] = []

    def start() -> MemcachedPeer:
        peer = MemcachedPeer(binary, free_port()).start()
        started.append(peer)
        return peer

    yield start
    for peer in started:
        peer.kill()


@pytest.fixture
def memcached(memcached_peers: Callable[[], MemcachedPeer]) -> MemcachedPeer:
    """One running memcached."""
    return memcached_peers()
