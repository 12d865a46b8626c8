"""What ships for operators: the systemd unit, the container image, the operations docs."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "stor.service"
DOCKERFILE = ROOT / "Dockerfile"


DROP_IN = ROOT / "systemd" / "stor.service.d" / "storages.conf"
PLUGIN_CACHE = "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"


def unit_settings(*paths: Path) -> dict[str, list[str]]:
    """``key: [values]`` of the unit (and drop-ins), in the order systemd reads them."""
    settings: dict[str, list[str]] = {}
    for path in paths or (UNIT,):
        for line in path.read_text().splitlines():
            if line and not line.startswith(("#", "[")) and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def example_storages() -> set[str]:
    example = json.loads((ROOT / "conf" / "stor.json.example").read_text())
    return {p for pair in example["storage_pairs"] for p in pair}


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
    # stor's per-SHA locks default to $RUNTIME_DIRECTORY/locks (stor.disk.locks), the one
    # directory besides the storages that ProtectSystem=strict leaves writable
    assert s["RuntimeDirectory"] == ["stor stor/locks"]
    assert s["KillMode"] == ["mixed"]  # SIGTERM to the main process, which passes it on once
    example = json.loads((ROOT / "conf" / "stor.json.example").read_text())
    grace = example.get("shutdown_grace_period", 30)
    assert float(s["TimeoutStopSec"][0].rstrip("s")) > grace


def test_the_unit_names_no_storage_the_drop_in_names_them_all() -> None:
    assert "/mnt/" not in UNIT.read_text()
    s = unit_settings()
    assert "ReadWritePaths" not in s and "RequiresMountsFor" not in s
    drop_in = unit_settings(DROP_IN)
    assert set(drop_in) == {"ReadWritePaths", "RequiresMountsFor"}
    for key in ("ReadWritePaths", "RequiresMountsFor"):
        (value,) = drop_in[key]
        assert set(value.split()) == example_storages(), key
    text = DROP_IN.read_text()
    assert text.index("[Unit]") < text.index("RequiresMountsFor=") < text.index("[Service]") \
        < text.index("ReadWritePaths=")


def install_unit(root: Path, drop_in: str | None = None) -> Path:
    """The unit and its storages drop-in as a host has them, the venv being this one."""
    unit = root / "stor.service"
    unit.write_text(UNIT.read_text().replace("/opt/stor/venv/bin/",
                                             f"{Path(sys.executable).parent}/"))
    (root / "stor.service.d").mkdir()
    (root / "stor.service.d" / "storages.conf").write_text(
        DROP_IN.read_text() if drop_in is None else drop_in)
    return unit


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", "verify", str(unit)],
                          capture_output=True, text=True, timeout=60)


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (make install-test installs it)")


@pytest.mark.acceptance('process')
@needs_systemd
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    # verify checks that the programs exist: point the unit at this venv, which is
    # what /opt/stor/venv holds on a host; it reads the drop-in beside the unit
    result = verify(install_unit(tmp_path))
    assert result.returncode == 0, result.stderr
    for name in ("stor.service", "storages.conf"):
        assert name not in result.stderr, result.stderr  # no warning about either


@pytest.mark.acceptance('process')
@needs_systemd
def test_systemd_analyze_verify_reads_the_drop_in(tmp_path: Path) -> None:
    """The check above would catch a broken drop-in (systemd names it in a warning)."""
    result = verify(install_unit(tmp_path, drop_in="[Service]\nReadWritePath=/mnt/data1\n"))
    assert "storages.conf" in result.stderr and "ReadWritePath" in result.stderr


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

    # an unprivileged user by default (issue 19), whose volumes the comments say how to hand over
    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] in ("stor", "10001")
    run = " ".join(v for k, v in instructions if k == "RUN")
    assert "useradd --system --uid 10001" in run
    assert "/run/stor" in run  # its lock directory, the user's own

    # hash-pinned dependencies, stor alone after them, and the plugin cache built last
    deps = "pip install --require-hashes --no-deps -r requirements.txt"
    assert deps in run and "pip install --no-deps ." in run
    assert run.index(deps) < run.index("pip install --no-deps .") < run.index(PLUGIN_CACHE)
    copied = [v.split()[:-1] for k, v in instructions if k == "COPY"]
    first_run = kinds.index("RUN")
    assert any("requirements.txt" in c for c in copied[:kinds[:first_run].count("COPY")])

    env = " ".join(v for k, v in instructions if k == "ENV")
    assert "CONFIG_FILE=/etc/stor.conf" in env

    # no VOLUME: a forgotten -v must not become an anonymous volume that passes check_mounts
    assert "VOLUME" not in kinds

    entry = json.loads(next(v for k, v in instructions if k == "ENTRYPOINT"))
    assert entry[0] == "twistd" and "stor" in entry and "--nodaemon" in entry

    for k, v in instructions:
        if k == "COPY":
            for source in v.split()[:-1]:
                assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored and "twisted/plugins/dropin.cache" in ignored


def test_dockerfile_tells_how_to_run_as_a_user() -> None:
    text = DOCKERFILE.read_text()
    assert "chown -R 10001:10001 /mnt/data1" in text and "--user 10001:10001" in text
    assert "--group-add" in text  # the host group that may read a 0640 root:stor config


READ_ONLY = """set -e
for d in $PLUGIN_DIRS; do mount --bind "$d" "$d"; mount -o remount,bind,ro "$d"; done
exec "$@"
"""


def plugin_dirs() -> list[Path]:
    import twisted.plugins

    return sorted({Path(d) for d in twisted.plugins.__path__ if any(Path(d).glob("*.py"))})


def run_read_only(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in this venv, twisted's plugin directories read-only (as under the unit's
    ProtectSystem=strict: a private mount namespace), its log on stdout."""
    script = ("import sys\n"
              "from twisted.logger import globalLogBeginner, textFileLogObserver\n"
              "globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], "
              "redirectStandardIO=False)\n" + code)
    env = dict(os.environ, PLUGIN_DIRS=" ".join(str(d) for d in plugin_dirs()))
    return subprocess.run(["unshare", "--mount", "sh", "-c", READ_ONLY, "sh",
                           sys.executable, "-c", script],
                          env=env, capture_output=True, text=True, timeout=60)


def _can_mount_read_only() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return run_read_only("pass").returncode == 0
    except OSError:
        return False


@pytest.mark.acceptance('process')
@pytest.mark.skipif(not _can_mount_read_only(),
                    reason="needs unshare and the right to mount (root) to make a read-only view")
def test_the_plugin_cache_built_at_install_serves_a_read_only_install() -> None:
    """stor's user cannot write site-packages (nor can anyone under ProtectSystem=strict):
    twisted's plugin cache must be written at install time."""
    for directory in plugin_dirs():
        (directory / "dropin.cache").unlink(missing_ok=True)  # as pip leaves them
    find = ("from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "print('taps:', sorted(p.tapname for p in getPlugins(IServiceMaker)))\n")
    before = run_read_only(find)
    assert "Unable to write to plugin cache" in before.stdout, before  # the reported problem

    subprocess.run([sys.executable, "-c", PLUGIN_CACHE], check=True, timeout=120)  # install step
    after = run_read_only(find)
    assert after.returncode == 0, after.stderr
    assert "Unable to write" not in after.stdout, after.stdout
    assert "'stor'" in after.stdout
    for where in (ROOT / "Makefile", DOCKERFILE):
        assert PLUGIN_CACHE in where.read_text(), where


def healthcheck_argv() -> list[str]:
    options, _, command = next(v for k, v in dockerfile_instructions() if k == "HEALTHCHECK"
                               ).partition("CMD ")
    assert "--timeout=" in options
    argv = json.loads(command)
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.acceptance('process', 'stor-process')
def test_the_healthcheck_asks_whether_stor_serves(stor_process, tmp_path: Path) -> None:
    """The image's HEALTHCHECK command, run against a real stor: 0 while it serves (a
    missing disk included: a restart would not bring it back), 1 when it does not; the
    URL can be pointed at /status."""
    env = " ".join(v for k, v in dockerfile_instructions() if k == "ENV")
    assert "STOR_STATUS_URL=http://127.0.0.1:8080/health/live" in env
    healthy = stor_process()
    missing = tmp_path / "unmounted"
    sick = stor_process(storage_pairs=[[str(missing / "a"), str(missing / "b")]], wait=False)

    def check(port: int, path: str = "/health/live") -> int:
        env = {"STOR_STATUS_URL": f"http://127.0.0.1:{port}{path}", "PATH": "/usr/bin:/bin"}
        return subprocess.run(healthcheck_argv(), env=env, capture_output=True,
                              timeout=30).returncode

    assert check(healthy.port) == 0
    from support.harness import answers, wait_for

    sick.wait_port()
    wait_for(lambda: (a := answers(sick.port)) is not None and a.status == 503, "a 503", sick)
    assert check(sick.port) == 0
    assert check(sick.port, "/status") == 1
    sick.popen.terminate()
    sick.popen.wait(30)
    assert check(sick.port) == 1


def test_readme_tells_how_to_operate_stor() -> None:
    """The README's "read on" list leads to the operations page, which covers the unit,
    the image, the logs and metrics, workers, stopping and the way from the Perl service."""
    assert "docs/operations.rst" in (ROOT / "README.rst").read_text()
    section = (ROOT / "docs" / "operations.rst").read_text()
    for needed in ("systemd/stor.service", "systemctl", "docker build", "docker run",
                   "--log-format json", "/metrics", "--workers", "shutdown_grace_period",
                   "log", "gelf", "Perl"):
        assert needed in section, needed


def test_install_as_written_works_under_protect_system_strict() -> None:
    """The docs' File output lives where the unit lets stor write (LogsDirectory=), logrotate
    signals through systemd (the unit runs with --pidfile=), and the venv is made by a Python
    the stor user can run (issue 21, item 11)."""
    unit = UNIT.read_text()
    assert "ProtectSystem=strict" in unit and "LogsDirectory=stor" in unit
    assert "--pidfile= " in unit
    docs = (ROOT / "docs" / "observability.rst").read_text()
    assert '"/var/log/stor/stor.log"' in docs and '"/var/log/stor.log"' not in docs
    assert "systemctl kill --kill-who=main --signal=SIGUSR1 stor.service" in docs
    assert "/run/stor.pid" not in docs
    steps = (ROOT / "docs" / "operations.rst").read_text()
    assert "/usr/bin/python3 -m venv /opt/stor/venv" in steps
    assert '--group-add "$(getent group stor | cut -d: -f3)"' in steps
