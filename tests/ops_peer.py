"""Helpers for the operations tests: stor as real ``twistd`` processes.

Every process is started in its own session (so a test can signal the whole
group if it must) and is always stopped at the end of its test.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
TIMEOUT = 30.0
AUTH_HEADER = "Basic d3JpdGVyOndyaXRlcl9wYXNz"  # writer:writer_pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, proc: "Stor | None" = None,
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

    def wait_serving(self) -> None:
        wait_for(lambda: (a := answers(self.port, "/health/live")) is not None
                 and a.status == 200, f"GET /health/live = 200 on port {self.port}", self)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"stor did not stop within {timeout}s of SIGTERM\n{self.describe()}")


@pytest.fixture
def stor_process(tmp_path: Path) -> Iterator[Callable[..., Stor]]:
    """Start ``twistd -n stor`` on a free port with a config of test storages."""
    started: list[Stor] = []

    def start(args: list[str] | None = None, env: dict[str, str] | None = None,
              wait: bool = True, **config: Any) -> Stor:
        n = len(started)
        storages = []
        for i in range(4):
            d = tmp_path / f"s{n}" / f"data{i + 1}"
            d.mkdir(parents=True)
            storages.append(str(d))
        port = free_port()
        raw: dict[str, Any] = {
            "storage_pairs": [storages[0:2], storages[2:4]],
            "check_mounts": False,
            "basic_auth": "writer:writer_pass",
            "listen": f"tcp:{port}:interface=127.0.0.1",
            "lock_dir": str(tmp_path / "locks"),  # the test's own, shared by its processes
        }
        raw.update(config)
        config_path = tmp_path / f"stor{n}.json"
        config_path.write_text(json.dumps(raw))
        full_env = dict(os.environ)
        full_env.pop("CONFIG_FILE", None)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.update(env or {})
        out, err = tmp_path / f"stor{n}.out", tmp_path / f"stor{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(
                [TWISTD, "-n", "--pidfile=", "stor", "--config", str(config_path), *(args or [])],
                stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=full_env, cwd=tmp_path,
                start_new_session=True,
            )
        proc = Stor(popen, out, err, port=port, config_path=config_path,
                    extra={"storages": storages})
        started.append(proc)
        if wait:
            proc.wait_serving()
        return proc

    try:
        yield start
    finally:
        for proc in started:
            kids = descendants(proc.popen.pid)
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
                try:
                    proc.popen.wait(15)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait(10)
            leftovers = kids + descendants(proc.popen.pid) + _running_with(proc.config_path)
            for pid, started_at in leftovers:
                if _start_time(pid) == started_at:  # still that process, not a reused pid
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


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
