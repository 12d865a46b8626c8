"""Issue 19, finding 1: what the daemon's user plants below a storage cannot steer a root scrub.

The storages here belong to root (as a host whose mount points are
``root:stor 0770`` leaves ``stor scrub`` root: there is nobody to drop to), and
every attack is a symbolic link planted where scrub walks, reads or writes:
an ``AA/BB/CC`` or ``.stor-tmp`` or ``.stor-quarantine`` directory, a ``.dat``.
Each must be reported as ``symlink`` and never followed: nothing outside the
storages is read, written, moved or removed.
"""

import hashlib
import io
import json
import os
import time
from pathlib import Path

import pytest

from stor.cli import main as cli
from stor.cli import scrub as command
from stor.core import layout
from support.helpers import flip, sha256

__all__: list[str] = []


@pytest.fixture
def host(tmp_path: Path) -> "Host":
    return Host(tmp_path)


class Host:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.storages = [root / f"data{i}" for i in range(1, 5)]
        for s in self.storages:
            s.mkdir()
        self.outside = root / "outside"  # what the links point at: not a storage
        self.outside.mkdir(mode=0o700)
        self.config = root / "stor.json"
        self.config.write_text(json.dumps({
            "storage_pairs": [[str(s) for s in self.storages[0:2]],
                              [str(s) for s in self.storages[2:4]]],
            "lock_dir": str(root / "locks")}))

    def put(self, storage: Path, data: bytes) -> Path:
        path = Path(layout.file_path(str(storage), sha256(data)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def scrub(self, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        out = io.StringIO()
        code = command.run_command(cli.parser().parse_args(
            ["scrub", "--json", "--config", str(self.config), *args]), out, io.StringIO())
        return code, json.loads(out.getvalue())

    def outside_files(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.outside)): p.read_bytes()
                for p in self.outside.rglob("*") if p.is_file()}


def kinds(report: dict) -> dict[str, int]:  # type: ignore[type-arg]
    return {k: n for k, n in report["counts"].items() if n}


def test_a_twin_directory_replaced_by_a_link_is_not_written_through(host: Host) -> None:
    data = os.urandom(5000)
    host.put(host.storages[0], data)
    cc = Path(os.path.dirname(layout.file_path(str(host.storages[1]), sha256(data))))
    cc.parent.mkdir(parents=True)
    cc.symlink_to(host.outside)  # the twin's AA/BB/CC points out of the storage
    code, report = host.scrub("--repair")
    assert host.outside_files() == {}, "the repair wrote through the link"
    assert code == 1
    assert kinds(report) == {"symlink": 1}
    assert report["problems"][0]["path"] == str(cc)
    assert cc.is_symlink()


def test_a_temp_directory_replaced_by_a_link_is_not_swept(host: Host) -> None:
    """``.stor-tmp`` -> a directory of old files: a sweep through it would remove them all."""
    victim = host.outside / "passwd"
    victim.write_text("root:x:0:0::/root:/bin/sh\n")
    old = time.time() - 3600
    os.utime(victim, (old, old))
    (host.storages[0] / layout.TEMP_DIR).symlink_to(host.outside)
    code, report = host.scrub("--repair")
    assert victim.exists(), "the sweep removed a file outside the storage"
    assert kinds(report) == {"symlink": 1}
    assert code == 1


def test_a_replica_replaced_by_a_link_is_neither_read_nor_moved(host: Host) -> None:
    secret = host.outside / "shadow"
    secret.write_bytes(b"root:$6$secret\n")
    secret.chmod(0o600)
    data = os.urandom(3000)
    good = host.put(host.storages[1], data)
    planted = Path(layout.file_path(str(host.storages[0]), sha256(data)))
    planted.parent.mkdir(parents=True)
    planted.symlink_to(secret)
    code, report = host.scrub("--repair")
    assert kinds(report) == {"symlink": 1}, report["problems"]
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in json.dumps(report)
    assert report["files"] == 1  # the twin only: the link was not hashed
    assert planted.is_symlink() and secret.read_bytes() == b"root:$6$secret\n"
    assert good.read_bytes() == data
    assert code == 1


def test_a_quarantine_replaced_by_a_link_receives_nothing(host: Host) -> None:
    data = os.urandom(4000)
    bad = host.put(host.storages[0], data)
    host.put(host.storages[1], data)
    flip(bad)
    (host.storages[0] / layout.QUARANTINE_DIR).symlink_to(host.outside)
    code, report = host.scrub("--repair")
    assert host.outside_files() == {}, "the corrupt replica was moved out of the storage"
    assert report["counts"]["symlink"] == 1
    assert report["counts"]["corrupt"] == 1 and report["repaired"]["corrupt"] == 0
    assert code == 1


def test_a_data_directory_replaced_by_a_link_is_reported_not_walked(host: Host) -> None:
    """``AA`` -> a directory holding a well-named replica: not hashed, not copied."""
    data = os.urandom(2000)
    elsewhere = host.put(host.outside, data)  # outside/AA/BB/CC/<SHA>.dat
    aa = host.storages[0] / layout.relative_path(sha256(data)).split(os.sep)[0]
    aa.symlink_to(host.outside / aa.name)
    code, report = host.scrub("--repair")
    assert kinds(report) == {"symlink": 1}
    assert report["files"] == 0
    assert not Path(layout.file_path(str(host.storages[1]), sha256(data))).exists()
    assert elsewhere.read_bytes() == data
    assert code == 1
