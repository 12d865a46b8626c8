"""The daemon as an operator runs it (docs/SPEC.md §7, §8): real ``twistd`` and ``stor``
processes, each killed at the end of its test whatever happens."""

import base64
import errno
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import harness
from support.harness import STOR, TWISTD, Proc, Stors
from support.ports import free_port

pytestmark = pytest.mark.acceptance('process', 'stor-process')

REPO = Path(__file__).resolve().parents[2]

START_TIMEOUT = 30.0
SHA1 = "11" * 32
SHA2 = "22" * 32
SHA3 = "33" * 32


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on loopback ``port``."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CONFIG_FILE", None)
    return env


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start a process with its output in files; every one is stopped afterwards."""
    stors = Stors(tmp_path)

    def start(args: list[str], env: dict[str, str] | None = None) -> Proc:
        return stors.run(args, f"proc{len(stors.started)}", env if env is not None else base_env())

    try:
        yield start
    finally:
        stors.close()


def wait_for(condition: Callable[[], bool], what: str, proc: Proc | None = None,
             timeout: float = START_TIMEOUT) -> None:
    """Poll ``condition`` until true; fail with the process output on timeout or exit."""
    harness.wait_for(condition, what, proc, timeout)


def status(port: int) -> int | None:
    """The status code of GET /status, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/status")
        return conn.getresponse().status
    except (ConnectionError, OSError):
        return None
    finally:
        conn.close()


def wait_serving(proc: Proc, port: int) -> None:
    wait_for(lambda: status(port) == 200, f"GET /status = 200 on port {port}", proc)


def stop(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGTERM)
    code = proc.popen.wait(15)
    assert code == 0, proc.describe()  # a graceful stop exits 0
    assert "Server Shut Down" in proc.out, proc.describe()


@pytest.fixture
def storages(storage_dirs: list[list[str]]) -> list[list[str]]:
    """conftest's two pairs of empty storage directories."""
    return storage_dirs


@pytest.fixture
def write_config(tmp_path: Path, storages: list[list[str]]) -> Callable[..., tuple[str, int]]:
    """Write a config (valid unless told otherwise); return its path and its listen port."""
    def write(name: str = "stor.json", text: str | None = None, **overrides: Any) -> tuple[str, int]:
        port = free_port()
        raw: dict[str, Any] = {
            "storage_pairs": storages,
            "check_mounts": False,
            "basic_auth": "writer:writer_pass",
            "listen": f"tcp:{port}:interface=127.0.0.1",
        }
        raw.update(overrides)
        path = tmp_path / name
        path.write_text(text.replace("PORT", str(port)) if text is not None else json.dumps(raw))
        return str(path), port
    return write


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------- broken configs

BROKEN: list[Any] = [
    pytest.param({"check_mounts": "yes"}, "check_mounts", id="check_mounts"),
    pytest.param({"writable_pairs_regex": "data["}, "writable_pairs_regex", id="bad-regex"),
    pytest.param({"storage_pairs": []}, "storage_pairs", id="no-pairs"),
    pytest.param({"storage_pairs": [["/x/a", "/x/b", "/x/c"]]}, "storage_pairs[0]", id="pair-of-3"),
    pytest.param({"max_upload_size": -1}, "max_upload_size", id="max_upload_size"),
    pytest.param({"s3_enabled": True}, "s3_credentials", id="s3-without-credentials"),
    pytest.param({"statsite": {"host": "h", "proto": "http"}}, "statsite.proto", id="statsite-proto"),
    pytest.param({"log": [["Gelf", "min_level", "info", "socket", {"host": "g", "port": "x"}]]},
                 "log[0].socket.port", id="gelf-port"),
]


def assert_refused_start(proc: Proc, port: int, names: str) -> None:
    """The process exits non-zero with one line naming ``names``, never listening on ``port``."""
    bound = False
    deadline = time.monotonic() + START_TIMEOUT
    while proc.popen.poll() is None:
        bound = bound or accepts(port)
        if time.monotonic() > deadline:
            pytest.fail("a broken config did not stop start-up\n" + proc.describe())
        time.sleep(0.01)
    assert proc.popen.returncode != 0, proc.describe()
    assert not bound, "something listened on the configured port\n" + proc.describe()
    assert refused(port)
    assert names in last_line(proc.err), proc.describe()
    everything = (proc.out + proc.err).splitlines()
    assert len([line for line in everything if "config error" in line]) == 1, proc.describe()


@pytest.mark.parametrize("overrides, key", BROKEN)
def test_broken_config_stops_start(spawn, write_config, overrides: dict[str, Any], key: str) -> None:
    path, port = write_config(**overrides)
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    assert_refused_start(proc, port, key)
    assert proc.popen.returncode == 2


def test_member_is_a_file_stops_start(spawn, write_config, tmp_path: Path, storages) -> None:
    f = tmp_path / "not-a-dir"
    f.write_text("")
    path, port = write_config(storage_pairs=[[storages[0][0], str(f)]])
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    assert_refused_start(proc, port, "storage_pairs[0][1]")


def test_invalid_json_stops_start(spawn, write_config) -> None:
    path, port = write_config(text='{"listen": "tcp:PORT:interface=127.0.0.1", "storage_pairs": [')
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    assert_refused_start(proc, port, path)


def test_missing_config_file_stops_start(spawn, tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) != 0, proc.describe()
    assert path in last_line(proc.err), proc.describe()
    assert len([line for line in (proc.out + proc.err).splitlines() if "config error" in line]) == 1


def test_invalid_listen_stops_start(spawn, write_config) -> None:
    path, _ = write_config(listen="bogus:1")
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert "listen" in last_line(proc.err), proc.describe()


def test_invalid_listen_option_stops_start(spawn, write_config) -> None:
    path, port = write_config()
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path, "--listen", "tcp:notaport"])
    assert_refused_start(proc, port, "listen")


@pytest.mark.parametrize("command", [[TWISTD, "-n", "--pidfile=", "stor"], [STOR, "serve"]],
                         ids=["twistd", "stor-serve"])
def test_no_config_at_all_is_one_line_and_exit_2(spawn, command: list[str]) -> None:
    proc = spawn(command)
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert proc.err == "stor: no config file: give --config FILE or set CONFIG_FILE\n", proc.describe()
    assert proc.out == "", proc.describe()


THREE_ERRORS = {
    "check_mounts": "yes",
    "writable_pairs_regex": "data[",
    "statsite": {"proto": "http"},
}


@pytest.mark.parametrize("how", ["twistd", "stor-serve", "check-config"])
def test_every_error_is_one_line_and_nothing_listens(spawn, write_config, how: str) -> None:
    path, port = write_config(**THREE_ERRORS)
    command = {"twistd": [TWISTD, "-n", "--pidfile=", "stor", "--config", path],
               "stor-serve": [STOR, "serve", "--config", path],
               "check-config": [STOR, "check-config", "--config", path]}[how]
    proc = spawn(command)
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert refused(port)
    errors = [line for line in proc.err.splitlines() if line.startswith("stor: config error: ")]
    assert [line.split(": ")[2] for line in errors] == [
        "writable_pairs_regex", "check_mounts", "statsite.proto"], proc.describe()
    assert "Traceback" not in proc.err + proc.out


def test_config_warnings_are_logged_once_at_start(spawn, write_config) -> None:
    path, port = write_config(lisen="tcp:1")
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    wait_serving(proc, port)
    stop(proc)
    lines = [line for line in proc.out.splitlines() if "lisen" in line]
    assert len(lines) == 1, proc.describe()
    assert 'did you mean "listen"' in lines[0]


def test_config_warnings_are_logged_by_the_workers_parent_only(stor_process) -> None:
    stor = stor_process(["--workers", "2"], colour="blue")
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    assert stor.terminate() == 0, stor.describe()
    lines = [line for line in stor.out.splitlines() if "colour" in line]
    assert len(lines) == 1, stor.describe()
    assert "is not a stor key" in lines[0]


# ---------------------------------------------------------------- serving

def test_config_file_environment_variable(spawn, write_config) -> None:
    path, port = write_config()
    env = base_env() | {"CONFIG_FILE": path}
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor"], env=env)
    wait_serving(proc, port)
    stop(proc)
    assert refused(port)


def test_config_option_beats_environment(spawn, write_config, tmp_path: Path) -> None:
    path, port = write_config()
    env = base_env() | {"CONFIG_FILE": str(tmp_path / "nope.json")}
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path], env=env)
    wait_serving(proc, port)
    stop(proc)


def test_listen_option_overrides_config(spawn, write_config) -> None:
    path, config_port = write_config()
    port = free_port()
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path,
                  "--listen", f"tcp:{port}:interface=127.0.0.1"])
    wait_serving(proc, port)
    assert refused(config_port)
    stop(proc)


def test_stor_serve_runs_the_daemon(spawn, write_config) -> None:
    path, port = write_config()
    proc = spawn([STOR, "serve", "--config", path])
    wait_serving(proc, port)
    stop(proc)


def post(port: int, sha: str, body: bytes, credentials: str | None = None) -> int:
    headers = {}
    if credentials is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", f"/{sha}", body=body, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


# ------------------------------------------------------------- check-config

def test_check_config_good(spawn, write_config) -> None:
    path, port = write_config()
    proc = spawn([STOR, "check-config", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()
    assert path in proc.out and "OK" in proc.out
    assert refused(port)


def test_check_config_from_environment(spawn, write_config) -> None:
    path, _ = write_config()
    proc = spawn([STOR, "check-config"], env=base_env() | {"CONFIG_FILE": path})
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()


@pytest.mark.parametrize("overrides, key", BROKEN)
def test_check_config_bad(spawn, write_config, overrides: dict[str, Any], key: str) -> None:
    path, _ = write_config(**overrides)
    proc = spawn([STOR, "check-config", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert key in last_line(proc.err), proc.describe()


def test_check_config_rejects_what_start_up_rejects(spawn, write_config) -> None:
    # a config that `twistd stor` refuses must not be reported OK by check-config
    path, _ = write_config(listen="bogus:1")
    proc = spawn([STOR, "check-config", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert "listen" in last_line(proc.err), proc.describe()


def test_check_config_without_a_file(spawn) -> None:
    proc = spawn([STOR, "check-config"])
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert "CONFIG_FILE" in proc.err


def test_check_config_prints_each_warning_and_exits_0(spawn, write_config) -> None:
    path, _ = write_config(lisen="tcp:1", s3_enabled="false",
                           s3_credentials={"access_key": "k", "secret_key": "s", "host": "h"})
    proc = spawn([STOR, "check-config", "--config", path])
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()
    assert proc.err.splitlines() == [
        'stor: config warning: lisen: is not a stor key: ignored (did you mean "listen"?)',
        'stor: config warning: s3_enabled: "false" is true, as the old service read it (every '
        'string but "" and "0" is): S3 is read',
    ], proc.describe()
    assert proc.out == f"{path}: OK (2 storage pairs)\n"


def write_unit(tmp_path: Path, timeout: str) -> str:
    unit = tmp_path / "stor.service"
    unit.write_text(f"[Unit]\nDescription=stor\n\n[Service]\nExecStart=/bin/true\n{timeout}\n")
    return str(unit)


def test_check_config_unit_with_a_short_stop_timeout_warns(spawn, write_config, tmp_path) -> None:
    path, _ = write_config(shutdown_grace_period=30)
    unit = write_unit(tmp_path, "TimeoutStopSec=20s")
    proc = spawn([STOR, "check-config", "--config", path, "--unit", unit])
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()
    warnings = proc.err.splitlines()
    assert len(warnings) == 1, proc.describe()
    assert warnings[0].startswith("stor: config warning: shutdown_grace_period: 30 s is not below "
                                  f"TimeoutStopSec (20 s, {unit}:6)")


def test_check_config_unit_with_room_for_the_grace_period(spawn, write_config, tmp_path) -> None:
    path, _ = write_config(shutdown_grace_period=30)
    proc = spawn([STOR, "check-config", "--config", path,
                  "--unit", write_unit(tmp_path, "TimeoutStopSec=1min")])
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()
    assert proc.err == "", proc.describe()


def test_check_config_of_the_shipped_example_and_unit(spawn) -> None:
    """Valid as shipped; the dry run's findings are this machine's (no /mnt/data*; the
    unit's user ``stor`` does not exist here, so the check runs as root)."""
    proc = spawn([STOR, "check-config", "--config", str(REPO / "conf" / "stor.json.example"),
                  "--unit", str(REPO / "systemd" / "stor.service"), "--user", "root"])
    assert proc.popen.wait(START_TIMEOUT) == 0, proc.describe()
    assert proc.err.splitlines() == [
        f"stor: config warning: storage_pairs (/mnt/data{i}): does not exist (stor never "
        "creates a storage): it would start without it, /status failing" for i in range(1, 5)
    ], proc.describe()


def test_check_config_unit_that_cannot_be_read(spawn, write_config, tmp_path) -> None:
    path, _ = write_config()
    proc = spawn([STOR, "check-config", "--config", path, "--unit", str(tmp_path / "nope.service")])
    assert proc.popen.wait(START_TIMEOUT) == 2, proc.describe()
    assert proc.err.startswith("stor: config error: --unit: cannot read "), proc.describe()


# ------------------------------------------------------------ temp sweep at start

def dead_pid() -> int:
    for pid in range(999_999, 900_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free pid found")


def test_stale_temp_files_removed_at_start(spawn, write_config, storages) -> None:
    pid = dead_pid()
    old = time.time() - 2 * 86400
    stale = [
        Path(storages[0][0]) / ".stor-tmp" / f"{SHA1}.{pid}.abcd1234.tmp",
        Path(storages[1][1]) / ".stor-tmp" / f"{SHA2}.{pid}.abcd1234.tmp",
    ]
    for f in stale:
        f.parent.mkdir()
        f.write_bytes(b"partial upload")
        os.utime(f, (old, old))
    sleeper = spawn(["sleep", "60"])
    live = Path(storages[0][0]) / ".stor-tmp" / f"{SHA3}.{sleeper.popen.pid}.abcd1234.tmp"
    live.write_bytes(b"upload in flight")
    stored = Path(storages[0][1]) / "11" / "11" / "11" / (SHA1.upper() + ".dat")
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"stored file")
    os.utime(stored, (old, old))

    path, port = write_config()
    proc = spawn([TWISTD, "-n", "--pidfile=", "stor", "--config", path])
    wait_serving(proc, port)
    wait_for(lambda: not any(f.exists() for f in stale), "stale temp files to go", proc)
    # the sweep reports what it removed once it has looked at every temp dir
    swept = re.compile(r"removed (\d+) stale temp file")
    wait_for(lambda: swept.search(proc.out) is not None, "the sweep to finish", proc)
    assert swept.search(proc.out).group(1) == "2", proc.describe()  # type: ignore[union-attr]
    assert live.read_bytes() == b"upload in flight"
    assert stored.read_bytes() == b"stored file"
    stop(proc)
