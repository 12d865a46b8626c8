"""The wheel as a host gets it: built from this tree, installed into a fresh venv with
the hash-pinned runtime requirements (``--require-hashes``) and itself with
``--no-deps``, then run from there, outside the source tree.

An acceptance test (it builds and installs: a minute or more).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from support.harness import Proc, request, wait_for

# Each test may be the first to ask for the module's fixture, which runs pip and the
# venv's Python ("process"); each also names what it runs itself.
built = pytest.mark.acceptance("process")

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.rst", "stor", "twisted")
"""What a wheel is built from (a copy: the build leaves build/ and *.egg-info behind)."""
INSTALL_TIMEOUT = 600


def run(argv: list[str | Path], cwd: Path, timeout: float = INSTALL_TIMEOUT
        ) -> subprocess.CompletedProcess[str]:
    """``argv`` to its end in ``cwd``; fails the test, with its output, on a non-zero exit."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CONFIG_FILE", "NOTIFY_SOCKET")}
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{argv} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@dataclass
class Installed:
    wheel: Path
    venv: Path
    home: Path
    """A directory outside the source tree to run from."""

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "dropin.cache"))
        else:
            shutil.copy2(ROOT / name, source / name)
    dist = base / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source],
        cwd=base)
    (wheel,) = dist.glob("stor-*.whl")

    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=base)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet"]
    run([*pip, "--require-hashes", "--no-deps", "-r", ROOT / "requirements.txt"], cwd=base)
    run([*pip, "--no-deps", wheel], cwd=base)
    run([venv / "bin" / "python", "-m", "pip", "check"], cwd=base)  # nothing missing
    home = base / "home"
    home.mkdir()
    return Installed(wheel, venv, home)


@built
def test_the_wheel_ships_the_package_data_and_the_plugin(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for name in ("stor/py.typed", "stor/http/openapi.json", "stor/config/schema.json",
                 "twisted/plugins/stor_plugin.py", "stor/cli/main.py"):
        assert name in names, name
    assert not any(n.startswith(("tests/", "bench/")) for n in names)


@built
def test_stor_is_imported_from_the_venv(installed: Installed) -> None:
    where = run([installed.bin("python"), "-c", "import stor; print(stor.__file__)"],
                cwd=installed.home).stdout.strip()
    assert Path(where).is_relative_to(installed.venv), where


@pytest.mark.acceptance("process", "stor-process")
def test_twistd_stor_help(installed: Installed) -> None:
    out = run([installed.bin("twistd"), "stor", "--help"], cwd=installed.home, timeout=60).stdout
    assert "--config" in out and "--workers" in out


@pytest.mark.acceptance("process", "stor-command")
def test_stor_help(installed: Installed) -> None:
    out = run([installed.bin("stor"), "--help"], cwd=installed.home, timeout=60).stdout
    assert "put" in out and "get" in out


def shipped(installed: Installed, package: str, name: str) -> object:
    """A data file of the installed package, read by the venv's Python."""
    code = f"from importlib.resources import files; print(files({package!r}).joinpath({name!r}).read_text())"
    return json.loads(run([installed.bin("python"), "-c", code], cwd=installed.home).stdout)


@built
def test_the_example_config_validates_against_the_shipped_schema(installed: Installed) -> None:
    schema = shipped(installed, "stor.config", "schema.json")
    assert schema == json.loads((ROOT / "stor" / "config" / "schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    example = json.loads((ROOT / "conf" / "stor.json.example").read_text())
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(example)]
    assert errors == []
    wrong = dict(example, listen=8080)  # the check above can fail: a wrong type is caught
    assert list(Draft202012Validator(schema).iter_errors(wrong))


SERVING = re.compile(r"serving on 127\.0\.0\.1:(\d+)")


@pytest.fixture
def served(installed: Installed, tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    """The venv's ``twistd -n stor`` on a port the kernel chose (``tcp:0``): the one it
    logs it serves on."""
    storages = [tmp_path / f"data{i}" for i in range(1, 3)]
    for s in storages:
        s.mkdir()
    config = tmp_path / "stor.json"
    config.write_text(json.dumps({"storage_pairs": [[str(s) for s in storages]],
                                  "check_mounts": False, "basic_auth": "writer:writer_pass",
                                  "listen": "tcp:0:interface=127.0.0.1"}))
    out, err = tmp_path / "stor.out", tmp_path / "stor.err"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "CONFIG_FILE", "NOTIFY_SOCKET", "PROMETHEUS_MULTIPROC_DIR")}
    with open(out, "wb") as o, open(err, "wb") as e:
        popen = subprocess.Popen([installed.bin("twistd"), "-n", "--pidfile=", "stor",
                                  "--config", str(config)], stdout=o, stderr=e,
                                 stdin=subprocess.DEVNULL, cwd=installed.home, env=env,
                                 start_new_session=True)
    proc = Proc(popen, out, err)
    try:
        match = wait_for(lambda: SERVING.search(proc.out), "stor to log its port", proc)
        yield proc, int(match[1])
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


@pytest.mark.acceptance("process", "stor-process")
def test_the_installed_stor_serves_its_openapi(installed: Installed,
                                               served: tuple[Proc, int]) -> None:
    proc, port = served
    answer = request(port, "GET", "/openapi.json")
    assert answer.status == 200, proc.describe()
    assert answer.headers["content-type"].startswith("application/json")
    document = json.loads(answer.body)
    assert document == shipped(installed, "stor.http", "openapi.json")
    assert document["openapi"].startswith("3.") and "/{sha}" in document["paths"]
