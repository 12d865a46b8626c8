"""Peers for the fleet tests: stor hosts as real processes that can be stopped
and started again on the same disks, nginx in front of them from
``conf/nginx-fleet.conf``, and waits on the bucket.

- fixture ``fleet``: :class:`Fleet`, whose :meth:`~Fleet.start` runs
  ``twistd -n stor`` for a named host (its own four storages, lock dir and
  port) and :meth:`~Fleet.restart` starts it again with the same config;
  every process is stopped after the test.
- fixture ``nginx``: starts nginx as a child process (``daemon off``, its
  prefix, pid, logs and temp dirs in the test's tmp) from the shipped config,
  with only the lines marked ``# @<name>`` changed (:func:`render_nginx`).
- fixture ``haproxy``: HAProxy in the foreground (master-worker) from the shipped
  ``conf/haproxy-fleet.cfg`` (:func:`render_haproxy`), with its stats page
  read as CSV (:meth:`HAProxy.servers`), its runtime API (:meth:`HAProxy.runtime`) and
  a reload (:meth:`HAProxy.reload`).
- :func:`s3_keys`: the config keys of a bucket on moto, optionally reached
  through another endpoint (a relay the test can cut).
- :func:`wait_in_bucket` / :func:`in_bucket`: bounded polls until the bucket
  holds an object, then its bytes read back and hashed.
- :func:`peak_rss_kib`: a process's peak resident memory (``VmHWM``).
- :func:`eventually_async`: await a coroutine predicate until it holds, on the reactor;
  :func:`host_config`: an in-process host's config under ``tmp_path/<name>``.
- :class:`S3Relay` (:func:`s3_relay`): a TCP relay in front of moto that
  the test can cut, hold silent or restore; it counts requests per object.
"""

import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import endpoints, protocol, reactor, task, threads
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from support.ports import AddressInUse, says_in_use, start_on_free_port, start_on_free_ports
from support.harness import (
    TWISTD, Stor, launch, request, stop, stor_config, storages_under, wait_for,
)
from support.s3 import MotoS3
from support.s3write import stored_sha
from stor.core import layout

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "conf" / "nginx-fleet.conf"
WAIT = 60.0  # seconds any single wait of these tests may take at most


def s3_keys(moto: MotoS3, bucket: str, endpoint: str | None = None, **keys: Any) -> dict[str, Any]:
    """The keys naming ``bucket`` on moto (reached at ``endpoint``, default moto itself)."""
    found: dict[str, Any] = {
        "s3_credentials": {"access_key": moto.access_key, "secret_key": moto.secret_key,
                           "host": endpoint or moto.endpoint},
        "s3_bucket": bucket,
        "s3_outbox_max_backoff": 1,
    }
    found.update(keys)
    return found


def wait_in_bucket(moto: MotoS3, bucket: str, sha: str, timeout: float = WAIT) -> str:
    """Blocking: poll until the bucket holds ``sha``'s key; the SHA-256 of its bytes."""
    return wait_for(lambda: stored_sha(moto, bucket, sha), f"{layout.s3_key(sha)} in {bucket}",
                    timeout=timeout)


async def in_bucket(moto: MotoS3, bucket: str, sha: str, timeout: float = WAIT) -> str:
    """:func:`wait_in_bucket` for tests on the reactor (boto runs in a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await threads.deferToThread(stored_sha, moto, bucket, sha)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{layout.s3_key(sha)} not in {bucket} after {timeout}s")
        await task.deferLater(reactor, 0.05, lambda: None)


async def eventually_async(predicate: Any, what: str, timeout: float = 30.0) -> None:
    """Await ``predicate()`` (a coroutine function) until it holds; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await task.deferLater(reactor, 0.05, lambda: None)


def host_config(tmp_path: Path, name: str, **keys: Any) -> dict[str, Any]:
    """An in-process host's config: its own two pairs and lock dir under ``tmp_path/name``."""
    storages = [tmp_path / name / f"data{i + 1}" for i in range(4)]
    for s in storages:
        s.mkdir(parents=True)
    return {
        "storage_pairs": [[str(storages[0]), str(storages[1])],
                          [str(storages[2]), str(storages[3])]],
        "basic_auth": "writer:writer_pass",
        "check_mounts": False,
        "lock_dir": str(tmp_path / name / "locks"),
        **keys,
    }


def bucket_keys(moto: MotoS3, bucket: str) -> list[str]:
    """Every key in the bucket (the tests' buckets hold a few)."""
    answer = moto.client().list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in answer.get("Contents", []))


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (``VmHWM``) so far, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def copies(storages: list[str], sha: str) -> list[str]:
    """The storages of ``storages`` holding a file named ``sha``."""
    return [s for s in storages if os.path.isfile(layout.file_path(s, sha))]


# -- a relay in front of S3 ------------------------------------------------------------


class _Upstream(protocol.Protocol):
    def __init__(self, down: "_Downstream") -> None:
        self.down = down

    def dataReceived(self, data: bytes) -> None:
        self.down.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ConnectionDone):
            self.down.transport.loseConnection()  # S3 closed after its answer: pass it all on
        else:
            self.down.transport.abortConnection()


class _Downstream(protocol.Protocol):
    def __init__(self, relay: "S3Relay") -> None:
        self.relay = relay
        self.up: _Upstream | None = None
        self.pending: list[bytes] = []
        self.held = relay.mode == "hold"
        self.closed = False
        self.tail = b""  # the end of what the client sent: a request line may span chunks
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.relay.connections.add(self)
        if self.held:
            return  # accepted, never answered: a hung S3
        up = _Upstream(self)
        d = endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.relay.target), up)
        d.addCallbacks(self._connected, lambda _: self.transport.abortConnection())

    def _connected(self, up: _Upstream) -> None:
        if self.closed:
            up.transport.abortConnection()
            return
        self.up = up
        for data in self.pending:
            up.transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        text = self.tail + data
        for m in _REQUEST_LINE.finditer(text):
            if m.end() > len(self.tail):  # not counted with the previous chunk
                self.relay.seen[m.group(1).decode()] += 1
        self.tail = text[-200:]
        if self.held:
            return
        if self.up is None:
            self.pending.append(data)
        else:
            self.up.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.relay.connections.discard(self)
        if self.up is not None:
            self.up.transport.abortConnection()
        self.lost.callback(None)


class S3Relay(protocol.Factory):
    """A loopback TCP relay to moto that the test can cut (connections refused),
    hold (connections taken and never answered: a hung S3) or restore, on the
    same port throughout.  It counts the requests it carried per object key.

    (amqp_peer's relay aborts the client's side when the broker closes, which
    would cut off the tail of an S3 answer that ends by closing.)
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.mode = "relay"
        self.connections: set[_Downstream] = set()
        self._listening: Any = None
        self.seen: Counter[str] = Counter()  # object key -> requests carried

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def buildProtocol(self, addr: object) -> _Downstream:
        return _Downstream(self)

    def requests(self, sha: str) -> int:
        """How many requests for ``sha``'s object went through the relay."""
        return self.seen[layout.s3_key(sha)]

    async def restore(self) -> "S3Relay":
        """Listen (again) on the relay's port, and relay what comes."""
        self.mode = "relay"
        endpoint = endpoints.TCP4ServerEndpoint(reactor, self.port, interface="127.0.0.1")
        self._listening = await endpoint.listen(self)
        self.port = self._listening.getHost().port
        return self

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._listening is not None:
            listening, self._listening = self._listening, None
            await listening.stopListening()
        await self.drop()

    async def drop(self) -> None:
        """Drop every open connection, as a crashed S3 would."""
        lost = [c.lost for c in self.connections]
        for c in list(self.connections):
            c.transport.abortConnection()
        await gatherResults(lost)


_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /[^/ ]+/([0-9a-f]{2}/[0-9a-f]{2}/"
                           rb"[0-9a-f]{2}/[0-9a-f]{64})[ ?]")


async def s3_relay(moto: MotoS3) -> S3Relay:
    """A relay in front of ``moto``, listening."""
    return await S3Relay(int(moto.endpoint.rsplit(":", 1)[1])).restore()


# -- stor hosts as processes -------------------------------------------------------


@dataclass
class Host:
    """A stor host of the fleet: its disks and config, and the process running it now."""

    name: str
    storages: list[str]
    config_path: Path
    port: int
    proc: Stor | None = None
    runs: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.popen.pid

    def describe(self) -> str:
        return f"{self.name}: " + (self.proc.describe() if self.proc else "not started")


class Fleet:
    """stor hosts on this machine, each with its own storages, sharing whatever
    the test's config gives them (a bucket, a memcached)."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self.hosts: list[Host] = []

    def start(self, name: str, wait: bool = True, port: int | None = None, run: bool = True,
              **config: Any) -> Host:
        """A new host ``name`` running with ``config`` on top of its own storages
        (with ``run=False`` only created: its storages and config; :meth:`run` starts it).

        It listens on ``port`` when the test must know it before (e.g. for
        ``fleet_peers``: take one from :func:`support.ports.free_port`), else on
        port 0; ``host.port`` is the port it reports (known once it serves: with
        ``wait=False``, call ``host.proc.wait_port()``)."""
        root = self._tmp / name
        storages = storages_under(root)
        if port is not None:
            config.setdefault("listen", f"tcp:{port}:interface=127.0.0.1")
        raw = stor_config(storages, lock_dir=str(root / "locks"), **config)
        config_path = root / "stor.json"
        config_path.write_text(json.dumps(raw))
        host = Host(name, storages, config_path, port or 0)
        self.hosts.append(host)
        if run:
            self._run(host, wait)
        return host

    def run(self, host: Host) -> Host:
        """Start a host created with ``run=False``."""
        assert host.proc is None, f"{host.name} has run before: restart it"
        self._run(host, True)
        return host

    def restart(self, host: Host, wait: bool = True) -> Host:
        """Start ``host`` again (it must have stopped) with the same config and disks, on
        the port it had, so a balancer in front finds it again."""
        assert host.proc is not None and host.proc.popen.poll() is not None, \
            f"{host.name} is still running"
        raw = json.loads(host.config_path.read_text())
        raw["listen"] = f"tcp:{host.port}:interface=127.0.0.1"
        host.config_path.write_text(json.dumps(raw))
        self._run(host, wait)
        return host

    def stop(self, host: Host, timeout: float = 45.0) -> int:
        """SIGTERM (a graceful stop), then its exit status.  A request still in flight
        gets ``shutdown_grace_period`` (30 s) to finish, so the wait is the unit's
        ``TimeoutStopSec`` (45 s), not less."""
        assert host.proc is not None
        return host.proc.terminate(timeout)

    def _run(self, host: Host, wait: bool) -> None:
        host.runs += 1
        argv = [TWISTD, "-n", "--pidfile=", "stor", "--config", str(host.config_path),
                "--log-format", "json"]
        host.proc = launch(argv, host.config_path.parent, f"run{host.runs}",
                           config_path=host.config_path, port=host.port)
        if wait:
            host.port = host.proc.wait_port()
            host.proc.wait_serving()

    def close(self) -> None:
        for host in self.hosts:
            if host.proc is not None:
                stop(host.proc)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    hosts = Fleet(tmp_path)
    try:
        yield hosts
    finally:
        hosts.close()


async def exited(host: Host, timeout: float = 30.0) -> int:
    """On the reactor: wait for ``host``'s process to end (a stop must not block the
    reactor while stor's uploads go through a relay running on it)."""
    assert host.proc is not None
    deadline = time.monotonic() + timeout
    while (code := host.proc.popen.poll()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{host.name} did not stop within {timeout}s\n{host.describe()}")
        await task.deferLater(reactor, 0.05, lambda: None)
    return code


# -- nginx ---------------------------------------------------------------------------

LOG_FILES = {"pid": "nginx.pid", "error_log": "error.log", "access_log": "access.log"}
_MARKED = re.compile(r"^(?P<indent>\s*)(?P<directive>\w+)\s+(?P<first>\S+?)(?P<rest>;|\s.*?;)"
                     r"(?P<pad>\s*)#\s*@(?P<name>\w+)\s*$")


def render_nginx(template: str, listen: int, upstreams: list[int], prefix: Path) -> str:
    """``template`` with its ``# @<name>`` lines pointed at this test: the listen
    address, one ``@stor`` line per upstream port (the first such line's
    parameters kept, the others dropped), pid, logs and temp dirs in ``prefix``.

    Only the first argument of a marked line changes; an unknown marker fails,
    so the shipped file cannot grow a line the test silently leaves alone.
    """
    out: list[str] = []
    seen: set[str] = set()
    for line in template.splitlines():
        m = _MARKED.match(line)
        if m is None:
            assert not re.search(r"#\s*@\w+\s*$", line), f"a marker the test cannot parse: {line!r}"
            out.append(line)
            continue
        name, directive = m["name"], m["directive"]

        def with_first(value: str) -> str:
            return f"{m['indent']}{directive} {value}{m['rest']}"

        if name == "stor":
            if name not in seen:
                out += [with_first(f"127.0.0.1:{port}") for port in upstreams]
        elif name == "listen":
            out.append(with_first(f"127.0.0.1:{listen}"))
        elif name in LOG_FILES:
            out.append(with_first(str(prefix / LOG_FILES[name])))
        elif name == "temp":
            os.makedirs(prefix / directive, exist_ok=True)
            out.append(with_first(str(prefix / directive)))
        else:
            raise AssertionError(f"unknown marker @{name} in {line!r}")
        seen.add(name)
    missing = {"stor", "listen", "pid", "error_log", "access_log", "temp"} - seen
    assert not missing, f"markers missing from the config: {sorted(missing)}"
    return "\n".join(out) + "\n"


def nginx_binary() -> str | None:
    """nginx, as ``apt-get install nginx`` puts it (/usr/sbin is often not on PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@dataclass
class Nginx:
    """nginx running as a child process of the test."""

    popen: subprocess.Popen[bytes]
    port: int
    prefix: Path
    config: str

    @property
    def log(self) -> str:
        parts = []
        for name in ("stderr.txt", "error.log", "access.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Any]:
    """Start nginx from conf/nginx-fleet.conf in front of the given stor ports."""
    binary = nginx_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: `make install-test` should have installed it")
        pytest.skip("nginx is not installed (run `make install-test`)")
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        return start_on_free_port(lambda port: start_on(port, upstreams))

    def start_on(port: int, upstreams: list[int]) -> Nginx:
        prefix = tmp_path / f"nginx{len(started)}"
        prefix.mkdir()
        text = render_nginx(NGINX_CONF.read_text(), port, upstreams, prefix)
        conf = prefix / "nginx.conf"
        conf.write_text(text)
        with open(prefix / "stderr.txt", "wb") as err:
            popen = subprocess.Popen(
                [binary, "-p", str(prefix), "-e", str(prefix / "stderr.txt"), "-c", str(conf),
                 "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                start_new_session=True)
        server = Nginx(popen, port, prefix, text)
        started.append(server)

        wait_answering("nginx", server, "/nginx-health")
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def wait_answering(name: str, server: Any, health: str) -> None:
    """Wait until the balancer ``server`` answers 200 on ``health``; fail if it exits
    (:class:`AddressInUse` if it exits because its port is taken: start it on another)."""
    def answers() -> bool:
        if server.popen.poll() is not None:
            if says_in_use(server.log):
                raise AddressInUse(f"{name}: port {server.port} is taken")
            pytest.fail(f"{name} exited ({server.popen.returncode})\n{server.log}")
        try:
            return request(server.port, "GET", health, timeout=2.0).status == 200
        except OSError:
            return False

    wait_for(answers, f"{name} answering on port {server.port}")


# -- HAProxy ---------------------------------------------------------------------------

HAPROXY_CONF = ROOT / "conf" / "haproxy-fleet.cfg"
_HAPROXY_MARKED = re.compile(r"^(?P<indent>\s*)(?P<directive>\w+)\s+(?P<args>\S.*?)\s*"
                             r"#\s*@(?P<name>\w+)\s*$")


def render_haproxy(template: str, listen: int, stats: int, upstreams: list[int],
                   runtime: Path, names: list[str] | None = None) -> str:
    """``template`` with its ``# @<name>`` lines pointed at this test: the frontend's
    and the stats page's ``bind``, one ``@stor`` server per upstream port (named
    ``names``, default stor1, stor2, …, with the first such line's parameters), the
    runtime API's ``stats socket`` at ``runtime``, logs to stderr."""
    names = names or [f"stor{i + 1}" for i in range(len(upstreams))]
    out: list[str] = []
    seen: set[str] = set()
    previous = ""
    for line in template.splitlines():
        m = _HAPROXY_MARKED.match(line)
        if m is None:
            assert not re.search(r"#\s*@\w+\s*$", line), f"a marker the test cannot parse: {line!r}"
            out.append(line)
            previous = ""
            continue
        name, indent, directive, args = m["name"], m["indent"], m["directive"], m["args"].split()
        first_of_group, previous = previous != name, name
        if name == "stor":  # each backend's group of servers: the test's hosts
            if first_of_group:
                out += [f"{indent}server {n} 127.0.0.1:{port} {' '.join(args[2:])}".rstrip()
                        for n, port in zip(names, upstreams)]
        elif name in ("bind", "stats"):
            port = listen if name == "bind" else stats
            out.append(f"{indent}{directive} 127.0.0.1:{port} {' '.join(args[1:])}".rstrip())
        elif name == "log":
            out.append(f"{indent}{directive} stderr format raw {' '.join(args[1:])}")
        elif name == "socket":
            out.append(f"{indent}{directive} {args[0]} {runtime} {' '.join(args[2:])}")
        else:
            raise AssertionError(f"unknown marker @{name} in {line!r}")
        seen.add(name)
    missing = {"stor", "bind", "stats", "log", "socket"} - seen
    assert not missing, f"markers missing from the config: {sorted(missing)}"
    return "\n".join(out) + "\n"


@dataclass
class HAProxy:
    """HAProxy running in the foreground as a child process of the test, in
    master-worker mode (as Debian's unit runs it: ``reload`` is SIGUSR2 to the master)."""

    popen: subprocess.Popen[bytes]
    port: int
    stats_port: int
    log_path: Path
    config_path: Path
    socket_path: Path
    binary: str

    def render(self, upstreams: list[int], names: list[str] | None = None) -> str:
        """The shipped config with ``upstreams`` as its servers (``names``, default
        stor1, stor2, …)."""
        return render_haproxy(HAPROXY_CONF.read_text(), self.port, self.stats_port, upstreams,
                              self.socket_path, names)

    def reload(self) -> None:
        """``systemctl reload haproxy`` as Debian's unit does it: check the config
        (``haproxy -c``), then SIGUSR2 to the master; returns once the new worker
        answers on the stats page with the config's servers."""
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config_path)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        names = set(re.findall(r"^\s*server (stor\d+) ", self.config_path.read_text(), re.M))
        self.popen.send_signal(signal.SIGUSR2)
        wait_for(lambda: set(self.servers("stor")) == names and set(
            self.servers("stor_write")) == names, "HAProxy reloaded with the new servers")

    def runtime(self, command: str) -> str:
        """One command on the runtime API's socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def servers(self, backend: str = "stor") -> dict[str, str]:
        """Each stor server's state in ``backend`` (``stor``: reads, ``stor_write``:
        uploads) on the stats page (``UP``, ``DOWN``, …)."""
        answer = request(self.stats_port, "GET", "/;csv", timeout=5.0)
        assert answer.status == 200, answer
        rows = csv.DictReader(io.StringIO(answer.body.decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == backend and row["svname"].startswith("stor")}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    """Start HAProxy from conf/haproxy-fleet.cfg in front of the given stor ports."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("haproxy is not installed: `make install-test` should have installed it")
        pytest.skip("haproxy is not installed (run `make install-test`)")
    started: list[HAProxy] = []

    def start(upstreams: list[int]) -> HAProxy:
        return start_on_free_ports(lambda port, stats: start_on(port, stats, upstreams))

    def start_on(port: int, stats: int, upstreams: list[int]) -> HAProxy:
        conf = tmp_path / f"haproxy{len(started)}.cfg"
        runtime = tmp_path / f"haproxy{len(started)}.sock"
        conf.write_text(render_haproxy(HAPROXY_CONF.read_text(), port, stats, upstreams, runtime))
        log_path = tmp_path / f"haproxy{len(started)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([binary, "-W", "-db", "-f", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        server = HAProxy(popen, port, stats, log_path, conf, runtime, binary)
        started.append(server)

        wait_answering("haproxy", server, "/haproxy-health")
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
