"""The one harness for stor as real processes (``twistd -n stor``, ``stor serve``).

Every process is started in its own session (so a test can signal the whole
group if it must) and is always stopped at the end of its test.  stor listens
on port 0 and the harness reads the port it got from its own report, the
``serving on 127.0.0.1:<port>`` line (``<n> workers sharing …`` with
``--workers``), or, when the config sends the log elsewhere, from the kernel's
table of the sockets the process listens on: no port is chosen for it, so no
other process can take it in between.

- fixture ``stor_process``: start stor on a config of test storages (keyword
  arguments are config keys);
- :class:`Stors`: the same outside a function-scoped fixture (module fixtures,
  the fleet's hosts); :func:`launch` for a command line of the test's own;
- :func:`request`, :func:`answers`, :func:`wait_for`: blocking HTTP and polls
  with a deadline, for tests that drive processes rather than the reactor.
"""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.helpers import AUTH_HEADER  # noqa: F401  (tests import it from here)

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
STOR = str(BIN / "stor")
TIMEOUT = 30.0
LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"
_SERVING = re.compile(r"(?:serving on|workers sharing) 127\.0\.0\.1:(\d+)")
_ENV_DROPPED = ("CONFIG_FILE", "NOTIFY_SOCKET", "PROMETHEUS_MULTIPROC_DIR")


def wait_for(condition: Callable[[], Any], what: str, proc: "Proc | None" = None,
             timeout: float = TIMEOUT) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"stor exited while waiting for {what}\n{proc.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n" + (proc.describe() if proc else ""))
        time.sleep(0.02)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 10.0) -> Answer:
    """One request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        conn.close()


def answers(port: int, path: str = "/status") -> Answer | None:
    try:
        return request(port, "GET", path, timeout=2.0)
    except OSError:
        return None


@dataclass
class Proc:
    """A process started by a test, its output in files."""

    popen: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path

    @property
    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"exit={self.popen.poll()}\n--- stdout\n{self.out[-6000:]}\n--- stderr\n{self.err[-3000:]}"


@dataclass
class Stor(Proc):
    """A stor process on ``port``."""

    port: int = 0
    config_path: Path = Path()
    extra: dict[str, Any] = field(default_factory=dict)

    def json_lines(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (fails the test on a line that is not)."""
        records = []
        for line in self.out.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON log line: {line!r}\n{self.describe()}")
        return records

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.json_lines() if r.get("namespace") == "stor.access"]

    def wait_port(self) -> int:
        """The port stor reports it listens on (waits for the report); also ``self.port``."""
        if not self.port:
            self.port = wait_for(self.reported_port, "stor to report its port", self)
        return self.port

    def reported_port(self) -> int | None:
        """The port of the ``serving on`` line, else of a socket the process listens on."""
        found = _SERVING.search(self.out)
        if found:
            return int(found.group(1))
        return listening_port(self.popen.pid)

    def wait_serving(self) -> None:
        port = self.wait_port()
        wait_for(lambda: (a := answers(port, "/health/live")) is not None
                 and a.status == 200, f"GET /health/live = 200 on port {port}", self)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stor did not stop within {timeout}s of SIGTERM\n{self.describe()}")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would redirect stor (a config file,
    a notify socket, a metrics dir), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROPPED}
    env.update(extra or {})
    return env


def launch(argv: list[str], cwd: Path, name: str = "stor", env: dict[str, str] | None = None,
           port: int = 0, config_path: Path = Path(), **extra: Any) -> "Stor":
    """Start ``argv`` in its own session, its output in ``cwd/<name>.out`` and ``.err``."""
    out, err = cwd / f"{name}.out", cwd / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen(argv, stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                 env=clean_env() if env is None else env, cwd=cwd,
                                 start_new_session=True)
    return Stor(popen, out, err, port=port, config_path=config_path, extra=dict(extra))


def storages_under(root: Path) -> list[str]:
    """Four new storage directories under ``root`` (two pairs)."""
    storages = []
    for i in range(4):
        d = root / f"data{i + 1}"
        d.mkdir(parents=True)
        storages.append(str(d))
    return storages


def stor_config(storages: list[str], **config: Any) -> dict[str, Any]:
    """The test config: two pairs of ``storages``, the test credentials, port 0."""
    raw: dict[str, Any] = {
        "storage_pairs": [storages[0:2], storages[2:4]],
        "check_mounts": False,
        "basic_auth": "writer:writer_pass",
        "listen": LOOPBACK_ANY_PORT,
    }
    raw.update(config)
    return raw


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


class Stors:
    """stor processes started under ``root``, each on a config of its own storages;
    :meth:`close` stops them all (their workers too)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Stor] = []

    def start(self, args: list[str] | None = None, env: dict[str, str] | None = None,
              wait: bool = True, **config: Any) -> "Stor":
        """``twistd -n stor`` with ``args``; ``config`` keys over :func:`stor_config`'s."""
        n = len(self.started)
        storages = storages_under(self.root / f"s{n}")
        config_path = self.root / f"stor{n}.json"
        config = {"lock_dir": str(self.root / "locks"), **config}  # shared by its processes
        config_path.write_text(json.dumps(stor_config(storages, **config)))
        argv = [TWISTD, "-n", "--pidfile=", "stor", "--config", str(config_path), *(args or [])]
        proc = self.run(argv, f"stor{n}", clean_env(env), config_path, storages=storages)
        if wait:
            proc.wait_serving()
        return proc

    def run(self, argv: list[str], name: str, env: dict[str, str] | None = None,
            config_path: Path = Path(), **extra: Any) -> "Stor":
        """Start ``argv`` (a stor command line of the test's own), stopped by :meth:`close`."""
        proc = launch(argv, self.root, name, env, config_path=config_path, **extra)
        self.started.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.started:
            stop(proc)


def stop(proc: "Proc") -> None:
    """SIGTERM, then SIGKILL if it lingers; then any worker left behind."""
    config_path = getattr(proc, "config_path", None)
    kids = descendants(proc.popen.pid)
    if proc.popen.poll() is None:
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(15)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(10)
    leftovers = kids + descendants(proc.popen.pid)
    if config_path and config_path != Path():
        leftovers += _running_with(config_path)
    for pid, started_at in leftovers:
        if _start_time(pid) == started_at:  # still that process, not a reused pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def stor_process(tmp_path: Path) -> Iterator[Callable[..., "Stor"]]:
    """Start ``twistd -n stor`` on port 0 with a config of test storages."""
    stors = Stors(tmp_path)
    try:
        yield stors.start
    finally:
        stors.close()


def listening_port(pid: int) -> int | None:
    """The TCP port a socket of process ``pid`` listens on (None: none yet)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return None
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # state LISTEN
                return int(fields[1].rsplit(":", 1)[1], 16)
    return None


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def _running_with(config_path: Path) -> list[tuple[int, str]]:
    """Processes whose command line names this test's config (orphaned workers)."""
    needle = str(config_path).encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            start = _start_time(int(entry))
            if needle in argv and start is not None:
                found.append((int(entry), start))
    return found


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[1] == str(pid) and fields[0] != "Z":
                found.append(int(entry))
    return sorted(found)


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below ``pid``."""
    found = []
    for child in children(pid):
        start = _start_time(child)
        if start is not None:
            found.append((child, start))
        found += descendants(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    fields = _stat(pid)  # a zombie is gone for the operator's purposes
    return fields is not None and fields[0] != "Z"
