"""Where the group commit (:mod:`stor.disk.groupsync`) trusts a ``syncfs`` at all."""

import os
from pathlib import Path

from stor.disk.groupsync import GroupSync, _kernel_reports_errors, filesystem_type

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:44 / /mnt/fuse rw,nosuid - fuse.faultfs faultfs rw,user_id=0
31 22 0:45 / /srv/nfs rw - nfs4 host:/export rw
32 22 254:1 /srv /bind rw - ext4 /dev/vda1 rw
"""


def test_the_filesystem_of_a_device_is_read_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    assert filesystem_type(os.makedev(254, 1), str(info)) == "ext4"
    assert filesystem_type(os.makedev(0, 44), str(info)) == "fuse.faultfs"
    assert filesystem_type(os.makedev(0, 45), str(info)) == "nfs4"
    assert filesystem_type(os.makedev(9, 9), str(info)) is None
    assert filesystem_type(os.makedev(254, 1), str(tmp_path / "absent")) is None


def test_only_kernels_that_report_writeback_errors_are_trusted() -> None:
    assert not _kernel_reports_errors("5.4.0-150-generic")
    assert not _kernel_reports_errors("4.19.0")
    assert _kernel_reports_errors("5.8.0")
    assert _kernel_reports_errors("6.1.0-27-amd64")
    assert not _kernel_reports_errors("garbage")


def test_a_local_filesystem_is_covered(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        expected = filesystem_type(os.fstat(fd).st_dev) in {"ext4", "xfs", "btrfs", "tmpfs"}
        assert GroupSync().covers(fd) is expected
    finally:
        os.close(fd)

