"""Issue 18 case 8: health is writability where stor writes, as the daemon's user.

A storage the daemon cannot write (``chmod 000`` under an unprivileged stor),
one out of inodes (a tmpfs with ``nr_inodes``) or mounted read-only fails
``/status``, readiness and ``stor_storage_up`` and is logged once; a storage
``writable_pairs_regex`` excludes is only read; a storage ``check_mounts``
judges unmounted reports no free bytes.
"""

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, request, wait_for
from support.unprivileged import open_tmp, unprivileged_stor

pytestmark = pytest.mark.acceptance('fault', 'process', 'stor-process')

__all__ = ["open_tmp", "unprivileged_stor"]

PERIOD = 0.2


def _storages(port: int) -> dict[str, dict]:
    answer = request(port, "GET", "/status", headers={"Accept": "application/json"})
    return {s["path"]: s for s in json.loads(answer.body)["storages"]}


def _probed(port: int, storage: str, ok: bool) -> dict | None:
    s = _storages(port)[storage]
    return s if s["probe"] is not None and s["probe"]["ok"] is ok else None


def test_a_storage_the_daemon_cannot_write_is_down_until_it_can(unprivileged_stor) -> None:
    stor = unprivileged_stor.start(probe_period=PERIOD)
    storages = stor.extra["storages"]
    down = [storages[0], storages[2]]  # one member of each pair: no writable pair is whole
    os.chmod(down[0], 0)
    try:
        wait_for(lambda: _probed(stor.port, down[0], False), "the first probed down", stor)
        for i in range(4):  # placement follows the probe: every upload goes to the other pair
            body = b"placed by the probe %d" % i
            answer = request(stor.port, "POST", f"/{hashlib.sha256(body).hexdigest()}", body,
                             {"Authorization": AUTH_HEADER})
            assert answer.status == 201, answer
            assert all(p.startswith(tuple(storages[2:])) for p in json.loads(answer.body))
        os.chmod(down[1], 0)
        for s in down:
            seen = wait_for(lambda s=s: _probed(stor.port, s, False), f"{s} probed down", stor)
            assert seen["ok"] is False and seen["writable"] is True
            assert seen["probe"]["kind"] == "write"
            assert "cannot be written: Permission denied" in seen["reason"]
        assert request(stor.port, "GET", "/status").status == 503
        assert request(stor.port, "GET", "/health/ready").status == 503
        metrics = request(stor.port, "GET", "/metrics").body.decode()
        for s in down:
            assert f'stor_storage_up{{storage="{s}"}} 0.0' in metrics
        assert f'stor_storage_up{{storage="{storages[1]}"}} 1.0' in metrics
    finally:
        for s in down:
            os.chmod(s, 0o755)
    for s in down:
        wait_for(lambda s=s: _probed(stor.port, s, True), f"{s} probed up", stor)
    assert request(stor.port, "GET", "/health/ready").status == 200
    wait_for(lambda: stor.out.count("is up again") == 2, "two 'up again' lines", stor)
    for s in down:  # each change logged once, however many probes saw it
        assert stor.out.count(f"storage {s} is down") == 1, stor.out
        assert stor.out.count(f"storage {s} is up again") == 1, stor.out


@pytest.fixture
def mounts(tmp_path: Path):
    made: list[Path] = []

    def mount(name: str, options: str) -> str:
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)], check=True)
        made.append(d)
        return str(d)

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    yield mount
    for d in made:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_storage_out_of_inodes_or_read_only_is_down(stor_process, mounts, tmp_path) -> None:
    full = mounts("full", "size=4m,nr_inodes=16")
    n = 0
    while True:
        try:
            Path(full, f"f{n}").write_bytes(b"")
        except OSError:
            break
        n += 1
    read_only = mounts("ro", "ro,size=1m")
    others = [str(tmp_path / "ok1"), str(tmp_path / "ok2")]
    for d in others:
        os.mkdir(d)
    stor = stor_process(storage_pairs=[[full, others[0]], [read_only, others[1]]],
                        probe_period=PERIOD)
    no_inodes = wait_for(lambda: _probed(stor.port, full, False), "the full tmpfs down", stor)
    assert no_inodes["reason"] == "has no free inodes"
    ro = wait_for(lambda: _probed(stor.port, read_only, False), "the ro tmpfs down", stor)
    assert ro["reason"] == "is mounted read-only"
    assert request(stor.port, "GET", "/health/ready").status == 503


def test_a_storage_the_regex_excludes_is_only_read(stor_process, mounts, tmp_path) -> None:
    read_only = mounts("archive", "ro,size=1m")
    others = [str(tmp_path / f"new{i}") for i in range(3)]
    for d in others:
        os.mkdir(d)
    stor = stor_process(storage_pairs=[[read_only, others[0]], [others[1], others[2]]],
                        writable_pairs_regex="new", probe_period=PERIOD)
    seen = wait_for(lambda: _probed(stor.port, read_only, True), "the archive probed", stor)
    assert seen["probe"]["kind"] == "read" and seen["ok"] is True and seen["writable"] is False
    assert request(stor.port, "GET", "/health/ready").status == 200


def test_an_unmounted_storage_reports_no_free_bytes(stor_process, mounts, tmp_path) -> None:
    mounted = [mounts("disk1", "size=4m"), mounts("disk2", "size=4m")]
    on_root = [str(tmp_path / "empty1"), str(tmp_path / "empty2")]  # disks that failed to mount
    for d in on_root:
        os.mkdir(d)
    for check_mounts in (True, None):
        stor = stor_process(storage_pairs=[mounted, on_root], probe_period=PERIOD,
                            check_mounts=check_mounts)  # null: the key's absent-rule (SPEC §2)
        storages = _storages(stor.port)
        for d in on_root:
            assert storages[d]["free_bytes"] is None, (check_mounts, storages[d])
        for d in mounted:
            assert storages[d]["free_bytes"] > 0
