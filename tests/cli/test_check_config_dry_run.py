"""``stor check-config`` is a dry run of start-up (issue 21, item 9): it finds what the daemon
would meet — storages and log files as the daemon's user, the unit's user, the peers — and
creates or changes nothing."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import STOR

REPO = Path(__file__).resolve().parents[2]


def check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    return subprocess.run([STOR, "check-config", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory outside pytest's root-only tree, where another user can be given rights."""
    path = Path(tempfile.mkdtemp(prefix="stor-dry-run-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def config(directory: Path, storages: list[str], **extra: object) -> str:
    path = directory / "stor.json"
    path.write_text(json.dumps({"storage_pairs": [storages[:2], storages[2:]],
                                "check_mounts": False, "basic_auth": "writer:pass", **extra}))
    return str(path)


def storages(directory: Path, owner: int = 0) -> list[str]:
    found = []
    for i in range(4):
        d = directory / f"data{i}"
        d.mkdir()
        os.chown(d, owner, owner)
        found.append(str(d))
    return found


def lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return done.stderr.splitlines()


@pytest.mark.acceptance('stor-process')
def test_a_file_log_output_in_a_missing_directory_fails_as_start_up_would(tmp_path: Path) -> None:
    path = config(tmp_path, storages(tmp_path),
                  log=[["File", "min_level", "info", "filename", str(tmp_path / "no" / "stor.log")]])
    done = check("--config", path)
    assert done.returncode == 2
    assert lines(done) == [f"stor: config error: log[0].filename: {tmp_path}/no/stor.log: its "
                           f"directory {tmp_path}/no does not exist"]
    assert not (tmp_path / "no").exists()  # nothing created


@pytest.mark.acceptance('stor-process')
def test_missing_and_relative_storages_are_warnings_and_strict_makes_them_errors(
        tmp_path: Path) -> None:
    dirs = storages(tmp_path)
    shutil.rmtree(dirs[3])
    (tmp_path / "rel").mkdir()
    dirs[2] = "rel"
    path = config(tmp_path, dirs)
    done = check("--config", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith(f"stor: config warning: storage_pairs ({dirs[3]}): does not exist")
               for line in lines(done)), done.stderr
    assert any(line.startswith("stor: config warning: storage_pairs (rel): is a relative path")
               for line in lines(done)), done.stderr
    strict = check("--config", path, "--strict", cwd=tmp_path)
    assert strict.returncode == 2
    assert all(line.startswith("stor: config error: ") for line in lines(strict))
    assert not Path(dirs[3]).exists()


@pytest.mark.acceptance('stor-process')
def test_strict_fails_a_misspelt_key_that_leaves_the_host_read_only(tmp_path: Path) -> None:
    path = config(tmp_path, storages(tmp_path), basic_auht="writer:pass")
    assert check("--config", path).returncode == 0
    done = check("--config", path, "--strict")
    assert done.returncode == 2
    assert 'basic_auht: is not a stor key: ignored (did you mean "basic_auth"?)' in done.stderr


@pytest.mark.acceptance('stor-process')
def test_storages_and_log_files_are_checked_as_the_daemon_user(shared: Path) -> None:
    nobody = 65534
    dirs = storages(shared, owner=nobody)
    os.chown(dirs[1], 0, 0)
    os.chmod(dirs[1], 0o755)  # root's: nobody can list it, not write it
    logs = shared / "logs"
    logs.mkdir(mode=0o755)  # root's: nobody cannot create stor.log there
    path = config(shared, dirs, log=[["File", "min_level", "info", "filename", str(logs / "stor.log")]])
    os.chmod(path, 0o644)
    as_root = check("--config", path)
    assert (as_root.returncode, as_root.stderr) == (0, "")
    done = check("--config", path, "--user", "nobody")
    assert done.returncode == 2
    assert lines(done) == [
        f"stor: config error: log[0].filename: {logs}/stor.log: the daemon's user nobody "
        f"cannot write its directory {logs}",
        f"stor: config warning: storage_pairs ({dirs[1]}): the daemon's user nobody cannot "
        "read and write it: no file could be stored or repaired there"]
    assert not (logs / "stor.log").exists()


@pytest.mark.acceptance('stor-process')
def test_the_units_user_is_the_daemon_user(shared: Path) -> None:
    dirs = storages(shared)  # root's, 0755
    path = config(shared, dirs)
    os.chmod(path, 0o644)
    unit = shared / "stor.service"
    unit.write_text("[Unit]\nDescription=stor\n\n[Service]\nUser=nobody\nExecStart=/bin/true\n"
                    "TimeoutStopSec=45s\n")
    done = check("--config", path, "--unit", str(unit))
    assert done.returncode == 0
    assert len(lines(done)) == 4 and all("the daemon's user nobody cannot read and write it"
                                         in line for line in lines(done))


@pytest.mark.acceptance('stor-process')
def test_probe_finds_a_memcached_that_does_not_answer(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    path = config(tmp_path, storages(tmp_path), memcached_servers=[f"127.0.0.1:{port}"])
    assert check("--config", path).returncode == 0  # not probed unless asked
    done = check("--config", path, "--probe")
    assert done.returncode == 2
    assert lines(done)[0].startswith(
        f"stor: config error: memcached_servers (127.0.0.1:{port}): does not answer")


@pytest.mark.acceptance('memcached', 'stor-process')
def test_probe_passes_with_a_real_memcached(tmp_path: Path, memcached) -> None:
    path = config(tmp_path, storages(tmp_path), memcached_servers=[f"127.0.0.1:{memcached.port}"],
                  rabbitmq_uri="amqp://guest:guest@127.0.0.1:5672/%2F")
    done = check("--config", path, "--probe")
    assert (done.returncode, done.stderr) == (0, "")


def test_the_shipped_unit_runs_the_dry_run_with_itself() -> None:
    text = (REPO / "systemd" / "stor.service").read_text()
    pre = [line for line in text.splitlines() if line.startswith("ExecStartPre=")]
    assert pre == ["ExecStartPre=/opt/stor/venv/bin/stor check-config --config "
                   "/etc/stor/stor.json --unit /etc/systemd/system/stor.service"]
