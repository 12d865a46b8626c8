"""A small upload in one job: hashed, written, made durable and committed by one thread.

A body of at most :data:`SMALL_MAX` bytes with a declared length is held in
memory by the reactor (as much as a large upload's pipeline may hold at
once) and handed here whole.  One disk-pool job then does what the streaming
path (:mod:`stor.store.upload`, :mod:`stor.disk.spool`) does in six:

1. under the SHA's lock, the duplicate check (:mod:`stor.disk.duplicate`):
   a 200 names replicas holding the exact bytes, durably (answered before
   the body is checked, as the streaming path does);
2. hash the body (nothing is written for a body that does not match);
3. a pair (placement from a health answer at most :data:`~stor.disk.local.
   PLACEMENT_TTL` old) and an owned temp on each member, the body written;
4. **group commit, first round** (:mod:`stor.disk.groupsync`): one
   ``syncfs`` shared with every upload that asked meanwhile makes the temps'
   data durable;
5. under the SHA's lock again: the duplicate check again (another upload may
   have finished meanwhile), the S3 outbox's marker, the missing ``AA/BB/CC``
   directories created and the temps renamed to their final paths;
6. **second round**: one ``syncfs`` makes those entries (and every directory
   of the chain, whoever created it) durable; then, and only then, the result.

The data is durable before any final path names it (a power cut never leaves
a ``.dat`` holding less than its bytes), and the answer waits for its own
entries: the conservative model of ``tests/support/crashcheck.py``, where a
``syncfs`` counts for everything changed on the filesystem before it began.

Anything unusual — a member failing, a ``syncfs`` reporting an error, a
rename refused — puts the temps back as they were and hands the spool to the
streaming path's :func:`~stor.disk.spool.commit`, which fsyncs file by file,
drops a failing member and moves the verified copy to another pair.
Everything here blocks.
"""

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable

from stor.core import layout
from stor.core.errors import Conflict, HashMismatch, NoSpace
from stor.core.results import Duplicate, Stored, UploadResult
from stor.disk.commit import MemberFailed
from stor.disk.fsio import KNOWN_SYNCED, known_durable, owner_of, unlink_quietly
from stor.disk.groupsync import GroupSync
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.spool import (BeforeInstall, OnDamaged, Spool, StillWanted, commit, hand_on,
                             open_spool)
from stor.disk.verified import VERIFIED, stamp_of

SMALL_MAX = 1024 * 1024
"""Largest declared length taken by this path (the streaming path holds up to
4 MiB of a body in memory at once, so this holds no more than it)."""

Chain = list[tuple[str, tuple[int, int]]]


def store_small(sha: str, body: bytes, store: LocalStore, locks: ShaLocks, group: GroupSync,
                before_install: BeforeInstall | None = None,
                still_wanted: StillWanted | None = None,
                on_damaged: OnDamaged | None = None,
                looked_up: Callable[[float], None] | None = None) -> UploadResult:
    """Blocking: the whole of a small upload (see the module docstring).

    Raises :class:`~stor.core.errors.HashMismatch` for a body that does not hash
    to ``sha`` (nothing written), or the :class:`~stor.core.errors.StorError`
    of a pair that could not take it.  ``looked_up`` is told the milliseconds of
    the duplicate check (the lookup a POST is counted for).
    """
    with locks.hold(sha):
        start = time.monotonic()
        found = _already_stored(sha, store, still_wanted, on_damaged)
        if looked_up is not None:
            looked_up((time.monotonic() - start) * 1000)
    if found is not None:
        return found  # the duplicate is answered before the body is checked (SPEC)
    actual = hashlib.sha256(body).hexdigest()
    if actual != sha:
        raise HashMismatch(sha, actual)
    spool = _open(store, sha, len(body))
    try:
        spool.write([body])
        if len(spool.temps) == 2 and not spool.failures:
            fast = _group_commit(spool, store, locks, group, before_install, still_wanted,
                                 on_damaged)
            if fast is not None:
                return fast
        for storage in spool.live():
            spool.sync_member(storage)
        if not spool.live():  # the pair failed whole: the body is here, another pair takes it
            spool = hand_on(store, spool, len(body), [body])
    except BaseException:
        spool.discard()
        raise
    # the careful way: file by file, a failing member dropped, another pair tried
    return commit(spool, store, locks, before_install, still_wanted, on_damaged)


def _already_stored(sha: str, store: LocalStore, still_wanted: StillWanted | None,
                    on_damaged: OnDamaged | None) -> Duplicate | None:
    """Under the SHA's lock: a DELETE since the upload began (409), or the duplicate."""
    if still_wanted is not None and not still_wanted(sha):
        raise Conflict(f"{sha} was deleted while it was uploaded")
    existing = store.existing_blocking(sha)
    if on_damaged is not None:
        for damage in existing.damaged:
            on_damaged(sha, damage)
    return Duplicate(existing.paths) if existing.whole else None


def _open(store: LocalStore, sha: str, length: int) -> Spool:
    """Temps on a pair placed from the cached health; on any trouble, the fresh choice
    (:func:`~stor.disk.spool.open_spool`), whose errors are the answer."""
    try:
        pair = store.choose_pair_cached_blocking(length)
        return Spool(sha, pair, length)
    except (MemberFailed, NoSpace):
        store.forget_placement()
    return open_spool(store, sha, length)


def _group_commit(spool: Spool, store: LocalStore, locks: ShaLocks, group: GroupSync,
                  before_install: BeforeInstall | None, still_wanted: StillWanted | None,
                  on_damaged: OnDamaged | None) -> UploadResult | None:
    """Steps 4 to 6; None when the careful way must take over (temps as they were)."""
    temps = list(spool.temps)
    fds = [t.fd for t in temps]
    if not all(group.covers(fd) for fd in fds):
        return None  # a syncfs would not be a promise there: fsync file by file
    if any(group.sync_all(fds)):
        return None  # the data is not known durable: fsync file by file
    with locks.hold(spool.sha):
        found = _already_stored(spool.sha, store, still_wanted, on_damaged)
        if found is not None:
            spool.discard()
            return found
        if before_install is not None:
            try:
                before_install(spool.sha, spool.pair)
            except OSError:
                return None
        installed = _rename_all(spool)
        if installed is None:
            return None
        finals, chains = installed
        if any(group.sync_all(fds)):
            _undo(spool, finals)
            return None
        for chain in chains:
            for path, ident in chain:
                known_durable(path, ident)
        for temp, final in zip(temps, finals):
            st = os.fstat(temp.fd)
            known_durable(final, (st.st_dev, st.st_ino))
            VERIFIED.record(final, stamp_of(st))  # hashed before install: HEAD may trust it
            KNOWN_SYNCED.add(final, stamp_of(st))  # its data was made durable before the rename
        for temp in temps:
            temp.close()  # renamed: nothing left to remove
        spool.discard()
    return Stored(finals, ())


def _rename_all(spool: Spool) -> tuple[list[str], list[Chain]] | None:
    """Create each member's ``AA/BB/CC`` and rename its temp to the final path (nothing
    fsynced: the second round does it).  None, with everything undone, on a failure."""
    finals: list[str] = []
    chains: list[Chain] = []
    try:
        for temp in spool.temps:
            final = layout.file_path(temp.storage, spool.sha)
            chains.append(_make_chain(temp.storage, os.path.dirname(final),
                                      owner_of(temp.storage)))
            if os.path.lexists(final):
                raise FileExistsError(errno.EEXIST, "in the way (damaged?)", final)
            os.rename(temp.path, final)
            finals.append(final)
    except OSError:
        _undo(spool, finals)
        return None
    return finals, chains


def _undo(spool: Spool, finals: list[str]) -> None:
    """Put renamed temps back: the careful way starts from temps, and a final path this
    upload made must not stay without its answer."""
    for temp, final in zip(spool.temps, finals):
        try:
            os.rename(final, temp.path)
        except OSError:
            unlink_quietly(final)


def _make_chain(storage: str, path: str, owner: tuple[int, int] | None) -> Chain:
    """The directories from ``storage`` down to ``path``, created when missing (``owner``'s,
    when given), each with its identity; the storage itself is never created."""
    if not os.path.isdir(storage):
        raise FileNotFoundError(errno.ENOENT, "storage is not a directory", storage)
    chain: Chain = []
    current = storage
    for part in os.path.relpath(path, storage).split(os.sep):
        current = os.path.join(current, part)
        try:
            os.mkdir(current)
            if owner is not None:
                os.chown(current, *owner)
        except FileExistsError:
            pass
        st = os.lstat(current)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", current)
        chain.append((current, (st.st_dev, st.st_ino)))
    return chain
