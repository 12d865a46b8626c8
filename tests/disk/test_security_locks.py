"""Issue 19, finding 2 (and issue 18 case 9): the host's lock directory is nobody else's lever.

Attacks of another local user, and of a compromised daemon planting symlinks
for a root tool, against the lock directory and the DELETE tombstones.
"""

import hashlib
import os
import stat
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, request, wait_for
from stor.core.errors import ConfigError
from stor.disk.locks import ShaLocks, Tombstones
from support.unprivileged import (INTRUDER, SERVICE, open_tmp, run_as, stranger, unprivileged_stor,
                                  user)

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


@pytest.mark.acceptance('process')
def test_another_local_user_cannot_plant_or_hold_locks_nor_tombstones(unprivileged_stor) -> None:
    stor = unprivileged_stor.start()
    locks = unprivileged_stor.root / "run" / "locks"
    body = b"intruder target %d" % os.getpid()
    prefix = hashlib.sha256(body).hexdigest()[:3]
    planted = run_as(INTRUDER, ["sh", "-c",
                                f"umask 077; : > {locks}/{prefix}.lock; mkdir {locks}/deleted; "
                                f"exec flock -n {locks}/{prefix}.lock true"],
                     unprivileged_stor.root)
    assert planted.returncode != 0, "the intruder could write in the lock directory"
    assert not (locks / f"{prefix}.lock").exists() or \
        (locks / f"{prefix}.lock").stat().st_uid != user(INTRUDER)[0]
    assert _upload(stor.port, body) == 201
    assert stat.S_IMODE(locks.stat().st_mode) & 0o007 == 0
    assert locks.stat().st_uid == user(SERVICE)[0]


@pytest.mark.acceptance('process')
def test_delete_works_whoever_made_the_tombstone_directory(unprivileged_stor) -> None:
    """Issue 18 case 9: the tombstone directory made by one process serves every other."""
    first = unprivileged_stor.start(delete_auth="admin:admin_pass")
    body = b"deleted twice"
    sha = hashlib.sha256(body).hexdigest()
    admin = {"Authorization": "Basic YWRtaW46YWRtaW5fcGFzcw=="}
    assert _upload(first.port, body) == 201
    assert request(first.port, "DELETE", f"/{sha}", headers=admin).status == 204
    second = unprivileged_stor.start(delete_auth="admin:admin_pass",
                                     storages=first.extra["storages"])
    assert _upload(second.port, body) == 201
    assert request(second.port, "DELETE", f"/{sha}", headers=admin).status == 204


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
