"""A real S3 for the tests: Ceph's RADOS Gateway from Debian's packages
(``ceph-mon ceph-osd radosgw ceph-common``, installed by ``make install-test``).

:func:`start_rgw` builds a one-machine cluster under a directory of the test
session and starts its three daemons as children, on loopback only:

- one monitor (``ceph-mon``), on a port *below* the ephemeral range (a port
  the kernel may hand out to any outgoing connection could be taken between
  the check and the bind, and the monitor's address is written into its map);
- one OSD (``ceph-osd``) with BlueStore on a sparse file kept *outside* the
  OSD's directory (inside it, ``mkfs`` fails with ELOOP);
- radosgw, with the ``beast`` frontend on a free loopback port (both ports from
  :mod:`support.ports`).

No manager, pools of size 1, no cephx (``auth … required = none``): then
radosgw must be told ``ms mon client mode = crc secure``, as its default
``secure`` cannot work without cephx.  ``paxos propose interval = 0.05`` and
``paxos min wait = 0.01`` make a start take seconds instead of ~14.
The daemons are stopped by PID (SIGTERM, then SIGKILL after ``STOP_WAIT``).

:class:`RgwS3` has the methods of :class:`support.s3.MotoS3` the tests use, so a
test can run against either (:func:`moto_then_rgw`).
"""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.ports import free_port
from support.s3 import S3Peer, _die_with_parent

START_TIMEOUT = 90.0
STOP_WAIT = 15.0  # radosgw can take ~8 s to exit on SIGTERM
BLOCK_SIZE = 8 * 1024 ** 3  # sparse: only what is written takes space
DAEMONS = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")

CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
paxos propose interval = 0.05
paxos min wait = 0.01
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
mon data = {root}/mon/$id
osd data = {root}/osd/$id
osd objectstore = bluestore
bluestore block path = {root}/block.$id
bluestore block create = true
bluestore block size = {block_size}
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 67108864
osd memory target = 536870912

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
"""


def rgw_installed() -> bool:
    return all(shutil.which(d) for d in DAEMONS)


@dataclass
class RgwS3(S3Peer):
    """A running Ceph RGW and the credentials of its one user."""

    root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def rss_kib(self) -> dict[str, int]:
        """Each daemon's resident memory now."""
        found = {}
        for name, p in self.processes.items():
            with open(f"/proc/{p.pid}/status") as f:
                found[name] = next(int(line.split()[1]) for line in f
                                   if line.startswith("VmRSS:"))
        return found

    def stop(self) -> None:
        """SIGTERM each daemon by its PID, radosgw first; SIGKILL what outlives STOP_WAIT."""
        for name in ("radosgw", "ceph-osd", "ceph-mon"):
            p = self.processes.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)


def start_rgw(root: Path) -> RgwS3:
    """Build the cluster under ``root`` and start it; stop it with :meth:`RgwS3.stop`."""
    for d in ("mon", "osd/0", "run", "log"):
        (root / d).mkdir(parents=True, exist_ok=True)
    fsid, osd_uuid = uuid.uuid4(), uuid.uuid4()
    mon_port, rgw_port = free_port(), free_port()  # support.ports: below the ephemeral range
    conf = root / "ceph.conf"
    conf.write_text(CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, root=root,
                                block_size=BLOCK_SIZE))
    c = ["-c", str(conf)]
    rgw = RgwS3(f"http://127.0.0.1:{rgw_port}", "STORTEST" + uuid.uuid4().hex[:12].upper(),
                uuid.uuid4().hex, root)
    try:
        _run(root, "monmaptool", "--create", "--add", "a", f"v2:127.0.0.1:{mon_port}",
             "--fsid", str(fsid), str(root / "monmap"))
        _run(root, "ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(root / "monmap"))
        rgw.processes["ceph-mon"] = _daemon(root, "ceph-mon", *c, "-i", "a", "-f")
        _run(root, "ceph", *c, "osd", "new", str(osd_uuid), timeout=60)
        _run(root, "ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", str(osd_uuid))
        rgw.processes["ceph-osd"] = _daemon(root, "ceph-osd", *c, "-i", "0", "-f")
        rgw.processes["radosgw"] = _daemon(root, "radosgw", *c, "-n", "client.rgw.a", "-f")
        _wait_answering(rgw)
        _run(root, "radosgw-admin", *c, "user", "create", "--uid", "stor", "--display-name",
             "stor", "--access-key", rgw.access_key, "--secret-key", rgw.secret_key)
    except BaseException:
        rgw.stop()
        raise
    return rgw


def _run(root: Path, *argv: str, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def _daemon(root: Path, *argv: str) -> subprocess.Popen[bytes]:
    with open(root / "log" / f"{argv[0]}.out", "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def _wait_answering(rgw: RgwS3) -> None:
    """Until radosgw answers HTTP (its pools are created on the way)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for name, p in rgw.processes.items():
            if p.poll() is not None:
                log = (rgw.root / "log" / f"{name}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited ({p.returncode}): {log}")
        try:
            with urllib.request.urlopen(rgw.endpoint + "/", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"radosgw did not answer within {START_TIMEOUT}s")


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RgwS3]:
    """Ceph RGW for the whole session (started on first use, ~200 MiB for all three)."""
    if not rgw_installed():
        if os.environ.get("CI"):
            pytest.fail("Ceph is not installed: `make install-test` should have installed it")
        pytest.skip("Ceph RGW is not installed (run `make install-test`)")
    root = tmp_path_factory.mktemp("rgw")
    started = time.monotonic()
    server = start_rgw(root)
    (root / "started.json").write_text(json.dumps({
        "seconds": round(time.monotonic() - started, 2), "rss_kib": server.rss_kib()}))
    yield server
    server.stop()


def moto_then_rgw(request: pytest.FixtureRequest, moto: Any) -> Any:
    """For a module's own ``moto`` fixture, parametrised ``["moto", "rgw"]``: the
    S3 its tests run against, moto's server and then Ceph RGW::

        @pytest.fixture(params=["moto", "rgw"])
        def moto(request, moto):
            return moto_then_rgw(request, moto)
    """
    return moto if request.param == "moto" else request.getfixturevalue("rgw")
