"""What ships for operators: the systemd unit, the container image, the README."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "stor.service"
DOCKERFILE = ROOT / "Dockerfile"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_is_a_hardened_notify_service() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    exec_start = shlex.split(s["ExecStart"][0])
    assert exec_start[0].endswith("/twistd") and exec_start[1:4] == ["-n", "--pidfile=", "stor"]
    assert exec_start[4:6] == ["--config", "/etc/stor/stor.json"]
    assert s["User"] == ["stor"]
    assert s["Restart"] == ["on-failure"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    storages = set(s["ReadWritePaths"][0].split())
    example = json.loads((ROOT / "conf" / "stor.json.example").read_text())
    assert storages == {p for pair in example["storage_pairs"] for p in pair}
    assert s["KillMode"] == ["mixed"]  # SIGTERM to the main process, which passes it on once
    grace = example.get("shutdown_grace_period", 30)
    assert float(s["TimeoutStopSec"][0].rstrip("s")) > grace


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (make install-test installs it)")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # The unit names /opt/stor/venv; verify checks that the programs exist, so
    # point it at this venv, which is what that path holds on a host.
    unit = tmp_path / "stor.service"
    unit.write_text(UNIT.read_text().replace("/opt/stor/venv/bin/", f"{Path(sys.executable).parent}/"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "stor.service" not in result.stderr, result.stderr  # no warning about it either


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_dockerfile_contract() -> None:
    instructions = dockerfile_instructions()
    kinds = [k for k, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")

    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")

    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "CONFIG_FILE=/etc/stor.conf" in env

    volumes = json.loads(next(v for k, v in instructions if k == "VOLUME"))
    assert set(volumes) >= {"/mnt/data1", "/mnt/data2", "/mnt/data3", "/mnt/data4"}

    entry = json.loads(next(v for k, v in instructions if k == "ENTRYPOINT"))
    assert entry[0] == "twistd" and "stor" in entry and "--nodaemon" in entry

    for k, v in instructions:
        if k == "COPY":
            for source in v.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and "twisted/plugins/dropin.cache" in ignored


def healthcheck_argv() -> list[str]:
    options, _, command = next(v for k, v in dockerfile_instructions() if k == "HEALTHCHECK"
                               ).partition("CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def test_the_healthcheck_follows_status(stor_process, tmp_path: Path) -> None:
    """The image's HEALTHCHECK command, run against a real stor: 0 when healthy, 1 when not."""
    healthy = stor_process()
    missing = tmp_path / "unmounted"
    sick = stor_process(storage_pairs=[[str(missing / "a"), str(missing / "b")]], wait=False)

    def check(port: int) -> int:
        env = {"STOR_STATUS_URL": f"http://127.0.0.1:{port}/status", "PATH": "/usr/bin:/bin"}
        return subprocess.run(healthcheck_argv(), env=env, capture_output=True,
                              timeout=30).returncode

    assert check(healthy.port) == 0
    from ops_peer import answers, wait_for

    wait_for(lambda: (a := answers(sick.port)) is not None and a.status == 503, "a 503", sick)
    assert check(sick.port) == 1


def test_readme_tells_how_to_operate_stor() -> None:
    readme = (ROOT / "README.rst").read_text()
    section = readme.split("Operating stor\n==============\n", 1)[1]
    for needed in ("systemd/stor.service", "systemctl", "docker build", "docker run",
                   "--log-format json", "/metrics", "--workers", "shutdown_grace_period",
                   "log", "gelf", "Perl"):
        assert needed in section, needed
