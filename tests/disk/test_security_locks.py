"""Issue 19, finding 2 (and issue 18 case 9): the host's lock directory is nobody else's lever.

Attacks of another local user, and of a compromised daemon planting symlinks
for a root tool, against the lock directory and the DELETE tombstones.
"""

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, request, wait_for
from stor.core.errors import ConfigError
from stor.disk.locks import LOCK_WAIT, ShaLocks, Tombstones
from support.unprivileged import (INTRUDER, SERVICE, as_user, open_tmp, run_as, stranger,
                                  unprivileged_stor, user)

__all__ = ["open_tmp", "unprivileged_stor"]

SHA = "abc" + "0" * 61


def test_the_lock_directory_and_its_files_are_writable_by_nobody_else(tmp_path: Path) -> None:
    locks = ShaLocks(str(tmp_path / "locks"))
    with locks.hold(SHA):
        pass
    Tombstones(locks).bury(SHA)
    for path in [tmp_path / "locks", tmp_path / "locks" / "abc.lock",
                 tmp_path / "locks" / "deleted", tmp_path / "locks" / "deleted" / SHA]:
        assert path.stat().st_mode & 0o002 == 0, f"{path} is world-writable"


@pytest.mark.parametrize("mode", [0o1777, 0o777])
def test_a_world_writable_lock_directory_is_refused(tmp_path: Path, mode: int) -> None:
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks").chmod(mode)
    with pytest.raises(ConfigError) as e:
        ShaLocks(str(tmp_path / "locks")).prepare()
    assert e.value.key == "lock_dir"
    assert "writable by every user" in str(e.value)


def test_a_lock_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    uid, gid = stranger()
    (tmp_path / "locks").mkdir(mode=0o700)
    os.chown(tmp_path / "locks", uid, gid)
    with pytest.raises(ConfigError, match=f"belongs to uid {uid}"):
        ShaLocks(str(tmp_path / "locks")).prepare()


def test_a_symlinked_lock_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "locks").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="symbolic link"):
        ShaLocks(str(tmp_path / "locks")).prepare()


def test_a_planted_lock_symlink_is_not_followed_nor_its_target_opened_up(tmp_path: Path) -> None:
    """A compromised daemon replaces a lock file by a symlink to a root-only file: a root
    tool taking that lock must neither follow it nor ``chmod`` the target (it was 0666)."""
    secret = tmp_path / "shadow"
    secret.write_text("root only")
    secret.chmod(0o600)
    locks = ShaLocks(str(tmp_path / "locks"))
    locks.prepare()
    (tmp_path / "locks" / "abc.lock").symlink_to(secret)
    with pytest.raises(OSError):
        with locks.hold(SHA):
            pass
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


def test_a_forged_tombstone_symlink_is_not_taken_for_a_delete(tmp_path: Path) -> None:
    locks = ShaLocks(str(tmp_path / "locks"))
    tombstones = Tombstones(locks)
    tombstones.sweep(3600)  # makes deleted/
    (tmp_path / "recent").write_text("")
    (tmp_path / "locks" / "deleted" / SHA).symlink_to(tmp_path / "recent")
    assert not tombstones.deleted_since(SHA, 0)


def _upload(port: int, body: bytes) -> int:
    sha = hashlib.sha256(body).hexdigest()
    return request(port, "POST", f"/{sha}", body, {"Authorization": AUTH_HEADER}).status


ADMIN = {"Authorization": "Basic YWRtaW46YWRtaW5fcGFzcw=="}  # admin:admin_pass

ATTACKS = {
    # what the intruder runs (before: the directory 1777 and its files 0666 let every one work)
    "a 0600 lock file of the prefix made first": "umask 077; : > {locks}/{prefix}.lock",
    "deleted/ made first, 0700": "mkdir -m 700 {locks}/deleted",
    "a tombstone forged for the SHA": ": > {locks}/deleted/{sha}",
    "a tombstone planted as a link": "ln -s /etc/hostname {locks}/deleted/{sha}",
}


@pytest.mark.acceptance('process')
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_another_local_user_cannot_plant_locks_nor_tombstones(unprivileged_stor, attack) -> None:
    """Finding 2 as a second local user does it, against stor running as its own user: each
    plant is refused by the directory's permissions, and the user sees upload, DELETE and
    upload again answered as if nobody had tried (before: 500, 500 and 409)."""
    stor = unprivileged_stor.start(delete_auth="admin:admin_pass")
    locks = unprivileged_stor.root / "run" / "locks"
    body = b"intruder target %d %s" % (os.getpid(), attack.encode())
    sha = hashlib.sha256(body).hexdigest()
    if attack.startswith("deleted/"):
        shutil.rmtree(locks / "deleted")  # as an older build left it: made at the first DELETE
    planted = run_as(INTRUDER, ["sh", "-c", ATTACKS[attack].format(locks=locks, prefix=sha[:3],
                                                                   sha=sha)],
                     unprivileged_stor.root)
    assert planted.returncode != 0, f"the intruder could plant {attack}"
    assert "Permission denied" in planted.stderr, planted.stderr
    if attack.startswith("deleted/"):
        stor = unprivileged_stor.start(delete_auth="admin:admin_pass",
                                       storages=stor.extra["storages"])  # makes it again
    assert _upload(stor.port, body) == 201
    assert request(stor.port, "DELETE", f"/{sha}", headers=ADMIN).status == 204
    assert _upload(stor.port, body) == 201
    for path in [locks, *locks.rglob("*")]:
        assert path.lstat().st_uid == user(SERVICE)[0], f"{path} is not the service's"
        assert stat.S_IMODE(path.lstat().st_mode) & 0o007 == 0, f"{path} is open to others"


@pytest.mark.acceptance('process')
def test_another_local_user_cannot_hold_a_shas_lock(unprivileged_stor) -> None:
    """The intruder tries to hold the lock of an upload's prefix (``flock`` on its file, for
    a minute): it cannot even open the file, and the upload is answered at once (before: it
    waited for the holder, 503 after the 10 s bound; before that, it hung)."""
    stor = unprivileged_stor.start()
    locks = unprivileged_stor.root / "run" / "locks"
    first, second = b"lock target one %d" % os.getpid(), b""
    prefix = hashlib.sha256(first).hexdigest()[:3]
    assert _upload(stor.port, first) == 201  # the lock file exists now, made by stor
    i = 0
    while not hashlib.sha256(second).hexdigest().startswith(prefix):
        second, i = b"lock target two %d" % i, i + 1
    holder = subprocess.Popen(as_user(INTRUDER, ["flock", "-x", f"{locks}/{prefix}.lock",
                                                 "sleep", "60"], unprivileged_stor.root),
                              stderr=subprocess.PIPE, text=True)
    try:
        try:  # refused at once; a holder would sleep its minute
            _, err = holder.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            err = ""
        assert holder.returncode not in (None, 0), "the intruder holds the lock"
        assert "Permission denied" in err, err
        started = time.monotonic()
        assert _upload(stor.port, second) == 201
        assert time.monotonic() - started < LOCK_WAIT / 2
        for path in ("/status", "/health/ready"):
            assert request(stor.port, "GET", path, timeout=5).status == 200, path
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


@pytest.mark.acceptance('process')
def test_delete_works_whoever_made_the_tombstone_directory(unprivileged_stor) -> None:
    """Issue 18 case 9: the tombstone directory made by one process serves every other."""
    first = unprivileged_stor.start(delete_auth="admin:admin_pass")
    body = b"deleted twice"
    sha = hashlib.sha256(body).hexdigest()
    assert _upload(first.port, body) == 201
    assert request(first.port, "DELETE", f"/{sha}", headers=ADMIN).status == 204
    second = unprivileged_stor.start(delete_auth="admin:admin_pass",
                                     storages=first.extra["storages"])
    assert _upload(second.port, body) == 201
    assert request(second.port, "DELETE", f"/{sha}", headers=ADMIN).status == 204


@pytest.mark.acceptance('process')
def test_a_lock_directory_an_intruder_made_first_stops_start_up(unprivileged_stor) -> None:
    """The old fallback (``/tmp/stor-<uid>/locks``) could be created by anyone first."""
    run = unprivileged_stor.root / "run"
    run.chmod(0o1777)  # a parent anyone can write, as /tmp
    made = run_as(INTRUDER, ["mkdir", "-m", "1777", str(run / "locks")], unprivileged_stor.root)
    assert made.returncode == 0, made.stderr
    stor = unprivileged_stor.start(wait=False)
    assert stor.popen.wait(30) != 0
    wait_for(lambda: "lock_dir" in stor.err + stor.out, "the lock_dir error", timeout=5)
    assert "writable by every user" in stor.err + stor.out


def test_a_tombstone_directory_of_another_user_stops_start_up_not_a_delete(tmp_path: Path) -> None:
    """An older build's root DELETE left ``deleted/`` 0755 root: refused at start, by name."""
    uid, gid = stranger()
    (tmp_path / "locks").mkdir(mode=0o770)
    (tmp_path / "locks" / "deleted").mkdir(mode=0o755)
    os.chown(tmp_path / "locks" / "deleted", uid, gid)
    with pytest.raises(ConfigError, match="deleted belongs to uid"):
        ShaLocks(str(tmp_path / "locks")).prepare()
