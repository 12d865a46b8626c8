"""The disk-fault layer itself (tests/support/faultfs.py): a FUSE passthrough that
fails, delays or corrupts the operations its rules name, changed while mounted."""

import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.unprivileged import open_tmp  # noqa: F401  (a fixture)

pytestmark = pytest.mark.acceptance("fault-fs")

DATA = os.urandom(300_000)


def _read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def test_passes_through_files_directories_and_owners(faultfs):
    fs = faultfs()
    d = fs.mountpoint / "aa" / "bb"
    d.mkdir(parents=True)
    (d / "f.tmp").write_bytes(DATA)
    fd = os.open(d / "f.tmp", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    os.rename(d / "f.tmp", d / "f.dat")
    os.link(d / "f.dat", d / "g.dat")
    os.chown(d / "f.dat", 65534, 65534)
    os.chmod(d / "f.dat", 0o640)
    os.truncate(d / "g.dat", 10)  # the same inode: f.dat too

    backing = fs.backing / "aa" / "bb"
    assert sorted(os.listdir(d)) == sorted(os.listdir(backing)) == ["f.dat", "g.dat"]
    st = os.stat(backing / "f.dat")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777, st.st_size) == (65534, 65534, 0o640, 10)
    assert os.stat(d / "f.dat").st_ino == st.st_ino
    assert _read(d / "f.dat") == DATA[:10]
    assert os.statvfs(fs.mountpoint).f_blocks == os.statvfs(fs.backing).f_blocks
    os.unlink(d / "g.dat")
    os.unlink(d / "f.dat")
    os.rmdir(d)
    assert os.listdir(fs.backing / "aa") == []


def test_read_fails_by_rule_even_when_cached_and_clear_restores(faultfs):
    fs = faultfs()
    (fs.mountpoint / "x.dat").write_bytes(DATA)
    (fs.mountpoint / "y.dat").write_bytes(DATA)
    assert _read(fs.mountpoint / "x.dat") == DATA  # now in the page cache

    fs.fail("read", path="*/x.dat")
    with pytest.raises(OSError) as raised:
        _read(fs.mountpoint / "x.dat")
    assert raised.value.errno == errno.EIO
    assert fs.wait_event("fail", "read") == ("fail", "read", "/x.dat")
    assert _read(fs.mountpoint / "y.dat") == DATA  # another path: untouched

    rule = fs.fail("read", path="*/y.dat")
    fs.drop(rule)
    assert _read(fs.mountpoint / "y.dat") == DATA
    fs.clear()
    assert _read(fs.mountpoint / "x.dat") == DATA


def test_count_limits_a_rule(faultfs):
    fs = faultfs()
    fs.fail("fsync", errno="ENOSPC", count=1)
    fd = os.open(fs.mountpoint / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x")
        with pytest.raises(OSError) as raised:
            os.fsync(fd)
        assert raised.value.errno == errno.ENOSPC
        os.fsync(fd)  # the rule has fired its once
    finally:
        os.close(fd)


def test_statfs_fails_by_rule(faultfs):
    fs = faultfs()
    fs.fail("statfs")
    with pytest.raises(OSError) as raised:
        os.statvfs(fs.mountpoint)
    assert raised.value.errno == errno.EIO
    fs.clear()
    assert os.statvfs(fs.mountpoint).f_blocks > 0


def test_delay_holds_a_read_until_it_ends_or_is_cleared(faultfs):
    fs = faultfs()
    (fs.mountpoint / "slow.dat").write_bytes(DATA)
    fs.delay("read", 0.3, path="*slow*", count=1)
    started = time.monotonic()
    assert _read(fs.mountpoint / "slow.dat") == DATA
    assert time.monotonic() - started >= 0.3

    fs.delay("read", None)  # until cleared
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(_read(fs.mountpoint / "slow.dat")))
    reader.start()
    fs.wait_event("delay", "read", after=1)
    reader.join(0.2)
    assert reader.is_alive() and not got  # stalled
    fs.clear()
    reader.join(10)
    assert got == [DATA]


def test_flip_corrupts_what_is_read_not_the_file(faultfs):
    fs = faultfs()
    (fs.mountpoint / "f.dat").write_bytes(DATA)
    fs.flip(path="*.dat", offset=200_000, mask=0x80)
    got = _read(fs.mountpoint / "f.dat")
    assert len(got) == len(DATA)
    assert got[200_000] == DATA[200_000] ^ 0x80
    assert got[:200_000] == DATA[:200_000] and got[200_001:] == DATA[200_001:]
    assert (fs.backing / "f.dat").read_bytes() == DATA
    fs.clear()
    assert _read(fs.mountpoint / "f.dat") == DATA


def test_a_read_rule_can_hold_one_offset_only(faultfs):
    fs = faultfs()
    (fs.mountpoint / "f.dat").write_bytes(DATA)
    fs.fail("read", path="*.dat", offset=250_000)
    with open(fs.mountpoint / "f.dat", "rb", buffering=0) as f:
        assert os.pread(f.fileno(), 4096, 0) == DATA[:4096]
        with pytest.raises(OSError) as raised:
            os.pread(f.fileno(), 4096, 249_000)
        assert raised.value.errno == errno.EIO


@pytest.mark.acceptance("fault-fs", "process")
def test_another_user_gets_its_own_owner_and_permissions(open_tmp, faultfs):
    (open_tmp / "mnt").mkdir()  # pytest's tmp dirs are 0700: another user cannot reach them
    fs = faultfs(mountpoint=open_tmp / "mnt")
    (fs.mountpoint / "open").mkdir(mode=0o777)
    os.chmod(fs.mountpoint / "open", 0o777)
    (fs.mountpoint / "closed").mkdir(mode=0o755)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    made = subprocess.run([*nobody, "touch", str(fs.mountpoint / "open" / "f")],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    st = os.stat(fs.backing / "open" / "f")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    refused = subprocess.run([*nobody, "touch", str(fs.mountpoint / "closed" / "f")],
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    assert not (fs.backing / "closed" / "f").exists()
    fs.unmount()  # before open_tmp removes the directory
