"""A real memcached for tests: on a free loopback port or a unix socket, killed and restarted at will.

The fixtures are registered by conftest (``pytest_plugins``); every peer a
test started is killed when it ends.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterator

import pytest

from stor.config.memcached import MemcachedServer, TcpServer, UnixServer
from support.ports import AddressInUse, says_in_use, start_on_free_port

HOST = "127.0.0.1"


def memcached_binary() -> str | None:
    """The memcached executable (``make install-test`` installs it), or None."""
    found = shutil.which("memcached")
    if found:
        return found
    return "/usr/bin/memcached" if os.access("/usr/bin/memcached", os.X_OK) else None


def connect(server: MemcachedServer, timeout: float) -> socket.socket:
    """A blocking socket to ``server``, TCP or unix."""
    if isinstance(server, TcpServer):
        return socket.create_connection((server.host, server.port), timeout=timeout)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(server.path)
    except OSError:
        s.close()
        raise
    return s


def answers(server: MemcachedServer, timeout: float = 0.2) -> bool:
    """Whether a memcached at ``server`` answers ``version``."""
    try:
        with connect(server, timeout) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).startswith(b"VERSION ")
    except OSError:
        return False


def raw_get(server: MemcachedServer, key: bytes) -> bytes | None:
    """What memcached itself holds under ``key``, read with the text protocol by hand."""
    with connect(server, 1.0) as s:
        s.sendall(b"get " + key + b"\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = s.recv(65536)
            assert chunk, f"memcached closed the connection after {reply!r}"
            reply += chunk
    if reply == b"END\r\n":
        return None
    header, _, rest = reply.partition(b"\r\n")
    _, got_key, _flags, length = header.split(b" ")
    assert got_key == key
    return rest[: int(length)]


class MemcachedPeer:
    """One memcached process at a fixed address, so a restart comes back at the same one.

    It listens on ``port`` on the loopback, or on the unix socket ``path``.
    """

    def __init__(self, binary: str, port: int = 0, path: str = "") -> None:
        self.binary = binary
        self.host = HOST
        self.port = port
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert not self.path, "a unix socket peer has no TCP address"
        return (self.host, self.port)

    @property
    def server(self) -> MemcachedServer:
        """Where it listens, as the config describes a server."""
        return UnixServer(self.path) if self.path else TcpServer(self.host, self.port)

    def get(self, key: bytes) -> bytes | None:
        """What it holds under ``key`` (a blocking client of the test's own)."""
        return raw_get(self.server, key)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 5.0) -> "MemcachedPeer":
        """Start memcached (TCP or unix socket only, 16 MiB) and return once it answers."""
        where = ["-s", self.path] if self.path else ["-l", self.host, "-p", str(self.port)]
        argv = [self.binary, *where, "-U", "0", "-m", "16"]
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

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as on a hung host.

        Returns once every thread of memcached is stopped: the signal is only
        queued when ``kill`` returns, and a worker thread still running could
        answer a request sent in between."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        tasks = Path(f"/proc/{self.process.pid}/task")
        deadline = time.monotonic() + 5
        while not all(_stopped(task) for task in tasks.iterdir()):
            assert time.monotonic() < deadline, "memcached did not stop"
            time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT: it answers again, on the connections it had."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> "MemcachedPeer":
        """Kill (if running) and start again on the same port, empty."""
        self.kill()
        return self.start()

    def _wait_until_answering(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not answers(self.server):
            assert self.process is not None
            if self.process.poll() is not None:
                stderr = self.process.stderr
                error = stderr.read().decode(errors="replace") if stderr else ""
                self.process = None
                if says_in_use(error):
                    raise AddressInUse(f"memcached: port {self.port} is taken: {error.strip()}")
                raise RuntimeError(f"memcached exited at start: {error.strip()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"memcached did not answer at {self.server.name} in {timeout} s")
            time.sleep(0.01)  # polling with a deadline: a process start has no event to await


@pytest.fixture
def memcached_peers() -> Iterator[Callable[..., MemcachedPeer]]:
    """A factory of running memcached peers on free ports (``unix=True``: on a unix socket).

    A port comes from :mod:`support.ports`; a peer that finds it taken starts again
    on another one.

    All are killed after the test, and their sockets' directories removed.
    """
    binary = memcached_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("memcached is not installed: `make test` should have installed it")
        pytest.skip("memcached is not installed (run `make install-test`)")
    started: list[MemcachedPeer] = []
    directories: list[str] = []

    def start(unix: bool = False) -> MemcachedPeer:
        if unix:  # short, under /tmp: a socket path is at most 107 bytes
            directories.append(tempfile.mkdtemp(prefix="stor-mc-"))
            peer = MemcachedPeer(binary, path=os.path.join(directories[-1], "sock"))
        else:
            peer = start_on_free_port(lambda port: MemcachedPeer(binary, port=port).start())
            started.append(peer)
            return peer
        started.append(peer.start())
        return peer

    yield start
    for peer in started:
        peer.kill()
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def memcached(memcached_peers: Callable[..., MemcachedPeer]) -> MemcachedPeer:
    """One running memcached."""
    return memcached_peers()


def _stopped(task: Path) -> bool:
    """Whether a thread (``/proc/<pid>/task/<tid>``) is stopped by a signal (state T)."""
    try:
        stat = (task / "stat").read_text()
    except FileNotFoundError:
        return True  # gone
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")
