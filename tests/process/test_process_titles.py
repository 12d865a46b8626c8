"""What an operator sees of stor's processes: titles in ``ps``, versions, exit codes, help
(issue 21, item 14)."""

import socket
import subprocess
from pathlib import Path

import pytest

from support.harness import BIN, children, wait_for

from stor import __version__

pytestmark = pytest.mark.acceptance('process', 'stor-command', 'stor-process')



def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_ps_names_the_main_process_and_each_worker_with_its_config(stor_process) -> None:
    stor = stor_process(["--workers", "2"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    config = str(stor.config_path.resolve())
    assert _cmdline(stor.popen.pid) == f"stor main: {config}"
    titles = sorted(_cmdline(pid) for pid in children(stor.popen.pid))
    assert titles == [f"stor worker 0: {config}", f"stor worker 1: {config}"]


def test_twistd_stor_version_is_stors_own() -> None:
    out = subprocess.run([str(BIN / "twistd"), "stor", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, f"stor {__version__}\n")


def test_twistd_stor_help_states_the_exit_codes() -> None:
    out = subprocess.run([str(BIN / "twistd"), "stor", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "Exit status: 0 after a graceful stop" in text
    assert "1 when it cannot listen" in text and "2 for a config or usage error" in text


def test_stor_help_describes_every_command_and_its_exit_codes() -> None:
    out = subprocess.run([str(BIN / "stor"), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for command in ("check-config", "serve", "scrub", "s3-sync", "put", "get", "verify"):
        assert f"{command} " in text, command
    assert "exit status" in text.lower()


def test_cannot_listen_exits_1_with_one_line(tmp_path: Path) -> None:
    """A port already taken is not a config error (2): the config is fine, the host is not."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = tmp_path / "stor.json"
    config.write_text('{"storage_pairs": [["%s", "%s"]], "check_mounts": false}'
                      % (tmp_path / "a", tmp_path / "b"))
    with taken:
        out = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "stor", "--config",
                              str(config), "--listen", f"tcp:{port}:interface=127.0.0.1"],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "stor: cannot listen:" in out.stdout + out.stderr


def test_the_scrub_timer_and_its_service_verify_clean(tmp_path: Path) -> None:
    """The shipped weekly scrub: systemd-analyze verify finds nothing to say about either."""
    units = Path(__file__).resolve().parents[2] / "systemd"
    for name in ("stor-scrub.service", "stor-scrub.timer"):
        text = (units / name).read_text().replace("/opt/stor/venv/bin/", f"{BIN}/")
        (tmp_path / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "stor-scrub.timer"),
                          str(tmp_path / "stor-scrub.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "stor-scrub" not in out.stderr, out.stderr
