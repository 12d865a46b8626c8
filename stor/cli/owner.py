"""Commands run as root act as the owner of the storages (docs/security.rst).

``stor scrub --repair`` and ``stor s3-sync`` read, create, rename and remove
files below the storages, and take the host's SHA locks.  Everything there
belongs to the daemon's user, so a compromised daemon can plant symlinks in
it; a root tool following them would write where the daemon may not (a
``.dat`` into a root-only directory, a lock that opens a root-only file up).
Running as that user instead, the tool can do nothing the daemon could not
already do: so, when started as root, a command switches to the user and
group owning the storages (supplementary groups included) before touching
them, and refuses when they do not belong to one user.  Storages owned by root
leave it root: there is nobody to take rights from.
"""

import os
import pwd
from collections.abc import Sequence


class OwnerError(Exception):
    """The storages' owner cannot be determined or become."""


def storage_owner(storages: Sequence[str]) -> tuple[int, int]:
    """(uid, gid) owning every one of ``storages`` that exists (not following symlinks)."""
    owners = set()
    for storage in storages:
        try:
            st = os.lstat(storage)
        except FileNotFoundError:
            continue  # a disk not mounted: the command reports it as it would anyway
        except OSError as e:
            raise OwnerError(f"{storage}: {e.strerror}") from None
        owners.add((st.st_uid, st.st_gid))
    if not owners:
        return 0, 0
    if len({uid for uid, _ in owners}) != 1:
        listed = ", ".join(f"uid {uid}" for uid, _ in sorted(owners))
        raise OwnerError(f"the storages belong to different users ({listed}): run the command "
                         "as the user stor runs as")
    (uid, gid), *_ = sorted(owners)
    return uid, gid


def act_as_storage_owner(storages: Sequence[str]) -> tuple[int, int] | None:
    """When root, become the storages' owner for good; the (uid, gid) switched to, if any."""
    if os.geteuid() != 0:
        return None
    uid, gid = storage_owner(storages)
    if uid == 0:
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
        groups = os.getgrouplist(name, gid)
    except KeyError:
        groups = [gid]  # a uid without a passwd entry: its group only
    os.setgroups(groups)
    os.setgid(gid)
    os.setuid(uid)  # real, effective and saved: no way back
    return uid, gid
