"""Local users for the security tests: stor as an unprivileged daemon, and an intruder.

The tests run as root, which ignores permissions; the attacks of issue 19 are
those of *another local user* against a stor running as its own user.  Two
system users are created when missing (``useradd``): ``stor-svc`` (the
service's user, owning the storages) and ``stor-intruder`` (no rights on
anything of stor's).

The interpreter lives below ``/root`` (0700), which an unprivileged process
cannot read; rather than opening ``/root`` to everyone, each unprivileged
process gets a private mount namespace (``unshare -m``) in which ``/root`` is
a 0755 tmpfs holding only a bind mount of the interpreter's tree.  Nothing
outside the process changes.
"""

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.harness import LOOPBACK_ANY_PORT, TWISTD, Stor, clean_env, launch, stop

SERVICE = "stor-svc"
INTRUDER = "stor-intruder"


def user(name: str) -> tuple[int, int]:
    """(uid, gid) of system user ``name``, created when missing (``useradd``: a process,
    so only in acceptance tests; fast tests take :func:`stranger`)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def stranger() -> tuple[int, int]:
    """(uid, gid) of a user other than the tests', without creating one (no process).

    For fast tests that only need a directory to belong to somebody else: the
    account ``nobody`` (present on every Debian and in every image), else its
    usual ids.  :func:`user` may run ``useradd``: a process, so acceptance only
    (the tiers plugin fails a fast test that starts one).
    """
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return entry.pw_uid, entry.pw_gid


def _interpreter_home() -> str:
    """The tree below /root that the venv's interpreter and stdlib live in ('' if none)."""
    real = os.path.realpath(sys.executable)
    if not real.startswith("/root/"):
        return ""
    return "/root/" + real.split("/")[2]


def reachable(argv: list[str], scratch: Path) -> list[str]:
    """``argv`` wrapped so that a process dropping to another user can still import Python."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to create users and switch to them)")
    home = _interpreter_home()
    if not home:
        return argv
    hold = scratch / "interp-mount"
    hold.mkdir(exist_ok=True)
    script = (
        "set -e; mount --make-rprivate /; "
        f"mount --bind {home} {hold}; "
        "mount -t tmpfs -o mode=755,size=1m tmpfs /root; "
        f"mkdir -p {home}; mount --move {hold} {home}; "
        'exec "$@"'
    )
    return [shutil.which("unshare") or "unshare", "-m", "sh", "-c", script, "sh", *argv]


def as_user(name: str, argv: list[str], scratch: Path) -> list[str]:
    """``argv`` run as user ``name`` from the start (``setpriv``), Python reachable."""
    uid, gid = user(name)
    return reachable([shutil.which("setpriv") or "setpriv", f"--reuid={uid}", f"--regid={gid}",
                      "--clear-groups", *argv], scratch)


def run_as(name: str, argv: list[str], scratch: Path, **kwargs: object) -> "subprocess.CompletedProcess[str]":
    """Run ``argv`` as ``name`` to its end; its output as text."""
    return subprocess.run(as_user(name, argv, scratch), capture_output=True, text=True,
                          timeout=60, **kwargs)  # type: ignore[call-overload]


@pytest.fixture
def open_tmp() -> "Iterator[Path]":
    """A scratch directory every user can traverse (pytest's tmp dirs are 0700), removed after."""
    path = Path(tempfile.mkdtemp(prefix="stor-sec-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Unprivileged:
    """A ``twistd stor`` started as root that drops to ``stor-svc`` (``--uid/--gid``)."""

    root: Path
    started: list[Stor] = field(default_factory=list)

    def storages(self, n: int = 4) -> list[str]:
        """``n`` storage directories owned by the service's user."""
        uid, gid = user(SERVICE)
        dirs = []
        for i in range(n):
            d = self.root / f"data{len(self.started)}-{i + 1}"
            d.mkdir()
            os.chown(d, uid, gid)
            dirs.append(str(d))
        return dirs

    def start(self, wait: bool = True, **config: Any) -> Stor:
        n = len(self.started)
        storages = config.pop("storages", None) or self.storages()
        raw: dict[str, Any] = {
            "storage_pairs": [storages[0:2], storages[2:4]], "check_mounts": False,
            "basic_auth": "writer:writer_pass", "listen": LOOPBACK_ANY_PORT,
            "lock_dir": str(self.root / "run" / "locks"),
            "statsite": {"host": "127.0.0.1"},
        }
        raw.update(config)
        config_path = self.root / f"stor{n}.json"
        config_path.write_text(json.dumps(raw))
        uid, gid = user(SERVICE)
        argv = reachable([TWISTD, "-n", "--pidfile=", f"--uid={uid}", f"--gid={gid}", "stor",
                          "--config", str(config_path)], self.root)
        proc = launch(argv, self.root, f"stor{n}", clean_env(), config_path=config_path,
                      storages=storages)  # on port 0: proc.port is the one it reports
        self.started.append(proc)
        if wait:
            proc.wait_serving()
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            stop(proc)


@pytest.fixture
def unprivileged_stor(open_tmp: Path) -> "Iterator[Unprivileged]":
    """Start stor processes running as ``stor-svc``; all stopped after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to create users and switch to them)")
    (open_tmp / "run").mkdir(mode=0o755)
    os.chown(open_tmp / "run", *user(SERVICE))  # as systemd's RuntimeDirectory= makes it
    runner = Unprivileged(open_tmp)
    try:
        yield runner
    finally:
        runner.stop_all()
