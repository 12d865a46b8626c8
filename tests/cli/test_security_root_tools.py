"""Issue 19, finding 1: a root ``stor scrub --repair`` or ``stor s3-sync`` acts as the storages'
owner, so what a compromised daemon plants below them gains it nothing."""

import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, STOR, request, stop
from stor.core import layout
from support.unprivileged import (SERVICE, open_tmp, reachable, run_as, unprivileged_stor,
                                  user)

pytestmark = pytest.mark.acceptance('process')

__all__ = ["open_tmp", "unprivileged_stor"]


def _run_as_root(argv: list[str], scratch: Path) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(reachable(argv, scratch), capture_output=True, text=True, timeout=120)


def _upload(port: int, body: bytes) -> list[str]:
    sha = hashlib.sha256(body).hexdigest()
    answer = request(port, "POST", f"/{sha}", body, {"Authorization": AUTH_HEADER})
    assert answer.status == 201, answer
    return json.loads(answer.body)


def test_root_repair_does_not_write_through_a_planted_directory_symlink(unprivileged_stor) -> None:
    stor = unprivileged_stor.start()
    body = os.urandom(5000)
    first, second = _upload(stor.port, body)
    root_only = unprivileged_stor.root / "root-only"
    root_only.mkdir(mode=0o700)
    # the daemon's user replaces the twin's AA/BB/CC by a symlink to a root-only directory
    cc = Path(second).parent
    os.unlink(second)
    cc.rmdir()
    os.symlink(root_only, cc)
    os.lchown(cc, *user(SERVICE))
    done = _run_as_root([STOR, "scrub", "--repair", "--config", str(stor.config_path)],
                        unprivileged_stor.root)
    assert list(root_only.iterdir()) == [], done.stdout + done.stderr
    assert Path(first).read_bytes() == body


def test_root_tools_leave_their_files_to_the_storages_owner(unprivileged_stor) -> None:
    """A root scrub run first makes the lock files the daemon's: its DELETEs work after it
    (issue 18 case 9: whichever process ran first)."""
    storages = unprivileged_stor.storages()
    config = unprivileged_stor.root / "scrub.json"
    locks = unprivileged_stor.root / "run" / "locks"
    config.write_text(json.dumps({"storage_pairs": [storages[0:2], storages[2:4]],
                                  "lock_dir": str(locks), "check_mounts": False}))
    body = b"scrubbed before the daemon started"
    sha = hashlib.sha256(body).hexdigest()
    for storage in storages[0:1]:  # a missing twin for --repair to mend, under its lock
        path = Path(layout.file_path(storage, sha))
        path.parent.mkdir(parents=True)
        path.write_bytes(body)
        for p in [path, *path.parents][:4]:
            os.chown(p, *user(SERVICE))
    done = _run_as_root([STOR, "scrub", "--repair", "--config", str(config)],
                        unprivileged_stor.root)
    assert done.returncode == 0, done.stdout + done.stderr
    for made in [locks, *locks.iterdir(), *Path(storages[1]).rglob("*")]:
        assert made.lstat().st_uid == user(SERVICE)[0], f"{made} belongs to root"
    stor = unprivileged_stor.start(delete_auth="admin:admin_pass", storages=storages)
    admin = {"Authorization": "Basic YWRtaW46YWRtaW5fcGFzcw=="}
    assert request(stor.port, "DELETE", f"/{sha}", headers=admin).status == 204
    assert _upload(stor.port, body)
    assert request(stor.port, "DELETE", f"/{sha}", headers=admin).status == 204


def test_storages_of_two_users_are_refused_by_a_root_tool(unprivileged_stor) -> None:
    storages = unprivileged_stor.storages()
    os.chown(storages[3], 0, 0)
    config = unprivileged_stor.root / "mixed.json"
    config.write_text(json.dumps({"storage_pairs": [storages[0:2], storages[2:4]],
                                  "lock_dir": str(unprivileged_stor.root / "run" / "locks")}))
    done = _run_as_root([STOR, "scrub", "--config", str(config)], unprivileged_stor.root)
    assert done.returncode == 2
    assert "belong to different users" in done.stderr
    assert stat.S_ISDIR(os.stat(storages[0]).st_mode)


def test_a_root_scrub_refuses_a_lock_directory_anyone_can_write(unprivileged_stor) -> None:
    storages = unprivileged_stor.storages()
    locks = unprivileged_stor.root / "run" / "locks"
    locks.mkdir(mode=0o777)
    locks.chmod(0o1777)
    config = unprivileged_stor.root / "planted.json"
    config.write_text(json.dumps({"storage_pairs": [storages[0:2], storages[2:4]],
                                  "lock_dir": str(locks)}))
    done = _run_as_root([STOR, "scrub", "--repair", "--config", str(config)],
                        unprivileged_stor.root)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "stor scrub: lock_dir: " in done.stderr and "writable by every user" in done.stderr
    assert "Traceback" not in done.stderr


def _root_owned_with_one_file(unprivileged_stor):
    """Storages ``root:stor 0770`` (a root tool stays root on them: nobody to drop to),
    one 5,000-byte file uploaded, the daemon stopped so that its user plants with
    nothing racing it (the probe makes ``.stor-tmp``): (stor, body, its two paths)."""
    _, gid = user(SERVICE)
    storages = unprivileged_stor.storages()
    for storage in storages:
        os.chown(storage, 0, gid)
        os.chmod(storage, 0o770)
    stor = unprivileged_stor.start(storages=storages)
    body = os.urandom(5000)
    first, second = _upload(stor.port, body)
    stop(stor)
    return stor, body, first, second


def test_a_root_scrub_of_root_owned_storages_follows_no_link_the_daemon_planted(
        unprivileged_stor) -> None:
    """Storages ``root:stor 0770`` (the daemon writes through its group) leave a root
    ``stor scrub`` root: nobody to drop to.  The daemon's user replaces the twin's
    ``AA/BB/CC`` and ``.stor-tmp`` by links into a root-only directory; the repair
    must neither write a ``.dat`` there nor sweep its old files as stale temps."""
    stor, body, first, second = _root_owned_with_one_file(unprivileged_stor)
    root_only = unprivileged_stor.root / "root-only"
    root_only.mkdir(mode=0o700)
    victim = root_only / "passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    os.utime(victim, (1, 1))
    cc, tmp = Path(second).parent, Path(first).parents[3] / layout.TEMP_DIR
    planted = run_as(SERVICE, ["sh", "-c", f"set -e; rm {second}; rmdir {cc}; "
                               f"ln -s {root_only} {cc}; rm -rf {tmp}; ln -s {root_only} {tmp}"],
                     unprivileged_stor.root)
    assert planted.returncode == 0, planted.stderr
    done = _run_as_root([STOR, "scrub", "--repair", "--config", str(stor.config_path)],
                        unprivileged_stor.root)
    assert sorted(p.name for p in root_only.iterdir()) == ["passwd"], done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("symlink   ") == 2, done.stdout
    assert Path(first).read_bytes() == body


def test_a_root_repair_neither_follows_nor_opens_up_a_planted_lock_symlink(
        unprivileged_stor) -> None:
    """The first half of finding 1: the daemon's user (who owns the lock directory) replaces
    the lock file of a prefix a repair needs by a link to a root-only file; the root repair
    (storages ``root:stor 0770``: it stays root) must not follow it (the old build
    ``fchmod``-ed the target to 0666) and fails that repair, leaving the rest whole."""
    stor, body, first, second = _root_owned_with_one_file(unprivileged_stor)
    locks = unprivileged_stor.root / "run" / "locks"
    lock_file = locks / f"{hashlib.sha256(body).hexdigest()[:3]}.lock"
    assert lock_file.exists()
    root_only = unprivileged_stor.root / "root-only"
    root_only.mkdir(mode=0o700)
    victim = root_only / "shadow"
    victim.write_text("root:$6$secret:19000::::::\n")
    victim.chmod(0o600)
    planted = run_as(SERVICE, ["sh", "-c", f"set -e; rm {second}; rm {lock_file}; "
                               f"ln -s {victim} {lock_file}"], unprivileged_stor.root)
    assert planted.returncode == 0, planted.stderr
    done = _run_as_root([STOR, "scrub", "--repair", "--config", str(stor.config_path)],
                        unprivileged_stor.root)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600, done.stdout + done.stderr
    assert victim.stat().st_uid == 0
    assert victim.read_text() == "root:$6$secret:19000::::::\n"
    assert lock_file.is_symlink()
    assert not Path(second).exists(), "repaired under a lock it could not take"
    assert f"repair failed: {lock_file.name}: Too many levels of symbolic links" in done.stdout
    assert done.returncode == 1, done.stdout + done.stderr
    assert Path(first).read_bytes() == body


@pytest.mark.acceptance('moto')
@pytest.mark.parametrize("owner", ["root", "service"])
def test_a_root_s3_sync_pushes_no_file_a_planted_link_points_at(unprivileged_stor, moto, bucket,
                                                                owner) -> None:
    """The daemon's user plants ``<sha>.dat`` as a link to a root-only file (named by that
    file's SHA-256, so the push would verify): a root ``stor s3-sync`` must not read it into
    the bucket, whence the daemon reads it back.  Storages of the service's user: the tool
    becomes that user first; storages ``root:stor 0770``: it stays root and opens no file
    through a link (before, it read the file as root and put it)."""
    _, gid = user(SERVICE)
    storages = unprivileged_stor.storages()
    if owner == "root":
        for storage in storages:
            os.chown(storage, 0, gid)
            os.chmod(storage, 0o770)
    root_only = unprivileged_stor.root / "root-only"
    root_only.mkdir(mode=0o700)
    secret = b"root:$6$secret:19000::::::\n"
    victim = root_only / "shadow"
    victim.write_bytes(secret)
    victim.chmod(0o600)
    planted = Path(layout.file_path(storages[0], hashlib.sha256(secret).hexdigest()))
    honest = os.urandom(3000)
    made = run_as(SERVICE, ["sh", "-c", f"set -e; mkdir -p {planted.parent}; "
                            f"ln -s {victim} {planted}"], unprivileged_stor.root)
    assert made.returncode == 0, made.stderr
    for storage in storages[2:4]:  # one honest file, on the other pair, as the daemon stored it
        path = Path(layout.file_path(storage, hashlib.sha256(honest).hexdigest()))
        path.parent.mkdir(parents=True)
        path.write_bytes(honest)
        for p in [path, *path.parents][:4]:
            os.chown(p, *user(SERVICE))
    config = unprivileged_stor.root / "sync.json"
    config.write_text(json.dumps({
        "storage_pairs": [storages[0:2], storages[2:4]], "check_mounts": False,
        "lock_dir": str(unprivileged_stor.root / "run" / "locks"),
        "s3_write_through": True, "s3_bucket": bucket,
        "s3_credentials": {"access_key": moto.access_key, "secret_key": moto.secret_key,
                           "host": moto.endpoint}}))
    done = _run_as_root([STOR, "s3-sync", "--config", str(config)], unprivileged_stor.root)
    listed = moto.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    keys = [o["Key"] for o in listed]
    assert not any(hashlib.sha256(secret).hexdigest() in k.lower() for k in keys), \
        done.stdout + done.stderr
    assert any(hashlib.sha256(honest).hexdigest() in k.lower() for k in keys), \
        done.stdout + done.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    assert victim.read_bytes() == secret and stat.S_IMODE(victim.stat().st_mode) == 0o600
