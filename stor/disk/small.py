"""Small uploads in batches: hashed, written, made durable and committed together.

A body of at most :data:`SMALL_MAX` bytes with a declared length is held in
memory by the reactor (as much as a large upload's pipeline may hold at
once) and handed here whole, usually with the other small uploads waiting at
that moment (:mod:`stor.disk.batch`).  :func:`store_batch` then does for all of
them what the streaming path (:mod:`stor.store.upload`, :mod:`stor.disk.spool`)
does for one in six pool jobs:

1. each job's SHA's lock, taken without waiting (a job whose lock is held
   elsewhere is handed back, :data:`LOCK_TAKEN`) and held to the end;
2. per job, the duplicate check (:mod:`stor.disk.duplicate`): a 200 names
   replicas holding the exact bytes, durably (answered before the body is
   checked, as the streaming path does); the body hashed (nothing is written
   for a body that does not match); a pair (placement from a health answer at
   most :data:`~stor.disk.local.PLACEMENT_TTL` old) and an owned temp on each
   member, the body written;
3. **group commit, first round** (:mod:`stor.disk.groupsync`): one ``syncfs``
   per filesystem for the whole batch makes every temp's data durable;
4. per job: the S3 outbox's marker, the missing ``AA/BB/CC`` directories and
   the renames to the final paths (the lock, held since the duplicate check,
   kept every other upload and DELETE of that SHA out meanwhile);
5. **second round**: one ``syncfs`` makes those entries (and every directory
   of the chains, whoever created them) durable; then, and only then, the
   results.

The data is durable before any final path names it (a power cut never leaves
a ``.dat`` holding less than its bytes), and each answer waits for its own
entries: the conservative model of ``tests/support/crashcheck.py``, where a
``syncfs`` counts for everything changed on the filesystem before it began.

Anything unusual for a job — a member failing, a ``syncfs`` reporting an
error, a rename refused — puts its temps back as they were and hands its spool
to the streaming path's :func:`~stor.disk.spool.commit`, which fsyncs file by
file, drops a failing member and moves the verified copy to another pair; the
other jobs of the batch go on.  :func:`store_small` is the same for one job
whose lock was waited for.  Everything here blocks.
"""

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from stor.core import layout
from stor.core.errors import Conflict, HashMismatch
from stor.core.results import Duplicate, Stored, UploadResult
from stor.disk.fsio import KNOWN_SYNCED, known_durable, owner_of, unlink_quietly
from stor.disk.groupsync import GroupSync
from stor.disk.local import LocalStore
from stor.disk.locks import ShaLocks
from stor.disk.spool import (BeforeInstall, OnDamaged, Spool, StillWanted, commit, hand_on,
                             open_spool_placed)
from stor.disk.verified import VERIFIED, stamp_of

SMALL_MAX = 1024 * 1024
"""Largest declared length taken by this path (the streaming path holds up to
4 MiB of a body in memory at once, so this holds no more than it)."""

Chain = list[tuple[str, tuple[int, int]]]


@dataclass(eq=False)
class SmallJob:
    """One small upload for :func:`store_batch`: the body and the upload's hooks."""

    sha: str
    body: bytes
    before_install: BeforeInstall | None = None
    still_wanted: StillWanted | None = None
    on_damaged: OnDamaged | None = None
    lookup_ms: float | None = None
    """Set by the job: milliseconds of its duplicate check (the lookup a POST is counted for)."""


class LockTaken:
    """A job :func:`store_batch` did not run: its SHA's lock was held by another
    holder (or by an earlier job of the same batch, for the same SHA)."""

    def __repr__(self) -> str:
        return "LOCK_TAKEN"


LOCK_TAKEN = LockTaken()

Outcome = UploadResult | Exception | LockTaken
"""What a job came to: its answer, the error to answer with, or :data:`LOCK_TAKEN`."""


def store_small(sha: str, body: bytes, store: LocalStore, locks: ShaLocks, group: GroupSync,
                before_install: BeforeInstall | None = None,
                still_wanted: StillWanted | None = None,
                on_damaged: OnDamaged | None = None,
                looked_up: Callable[[float], None] | None = None) -> UploadResult:
    """Blocking: the whole of one small upload (see the module docstring), waiting
    for the SHA's lock in this thread (or holding it already).

    Raises :class:`~stor.core.errors.HashMismatch` for a body that does not hash
    to ``sha`` (nothing written), or the :class:`~stor.core.errors.StorError`
    of a pair that could not take it.  ``looked_up`` is told the milliseconds of
    the duplicate check (the lookup a POST is counted for).
    """
    job = SmallJob(sha, body, before_install, still_wanted, on_damaged)
    with locks.hold(sha):
        [outcome] = _store_held([job], store, locks, group)
    if looked_up is not None and job.lookup_ms is not None:
        looked_up(job.lookup_ms)
    if isinstance(outcome, Exception):
        raise outcome
    assert not isinstance(outcome, LockTaken)
    return outcome


def store_batch(jobs: Sequence[SmallJob], store: LocalStore, locks: ShaLocks,
                group: GroupSync) -> list[Outcome]:
    """Blocking: the jobs whose SHA's lock is free now, stored together (two shared
    flushes for all of them); one outcome per job, in order.

    A job whose lock is held elsewhere, or whose SHA an earlier job of the batch
    has, is not run (:data:`LOCK_TAKEN`): the caller waits for that lock its own
    way.  Each job's answer still waits for its own bytes and entries.
    """
    first: dict[str, SmallJob] = {}
    for job in jobs:
        first.setdefault(job.sha.lower(), job)
    runnable = list(first.values())
    with locks.hold_free([job.sha for job in runnable]) as held:
        mine = [job for job in runnable if job.sha in held]
        done = dict(zip(mine, _store_held(mine, store, locks, group)))
    return [done.get(job, LOCK_TAKEN) for job in jobs]


def _store_held(jobs: Sequence[SmallJob], store: LocalStore, locks: ShaLocks,
                group: GroupSync) -> list[Outcome]:
    """Under every job's lock: write them all, commit them together, the careful way
    for any the group commit could not take."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    written: list[tuple[int, Spool]] = []
    for i, job in enumerate(jobs):
        try:
            found = _written(job, store)
        except Exception as e:
            outcomes[i] = e
            continue
        if isinstance(found, Spool):
            written.append((i, found))
        else:
            outcomes[i] = found
    together = [(i, spool) for i, spool in written
                if len(spool.temps) == 2 and not spool.failures
                and all(group.covers(t.fd, t.dev) for t in spool.temps)]
    committed = _group_commit([(jobs[i], spool) for i, spool in together], group)
    for (i, _), result in zip(together, committed):
        outcomes[i] = result
    for i, spool in written:
        if outcomes[i] is None:  # the careful way: file by file
            outcomes[i] = _careful(jobs[i], spool, store, locks)
    assert all(outcome is not None for outcome in outcomes), "every job has its outcome"
    return cast(list[Outcome], outcomes)


def _written(job: SmallJob, store: LocalStore) -> "Duplicate | Spool":
    """The duplicate (answered before the body is checked, as the SPEC orders), or
    the body checked and written to temps on a pair."""
    start = time.monotonic()
    found = _already_stored(job.sha, store, job.still_wanted, job.on_damaged)
    job.lookup_ms = (time.monotonic() - start) * 1000
    if found is not None:
        return found
    actual = hashlib.sha256(job.body).hexdigest()
    if actual != job.sha:
        raise HashMismatch(job.sha, actual)
    spool = open_spool_placed(store, job.sha, len(job.body))
    try:
        spool.write([job.body])
    except BaseException:
        spool.discard()
        raise
    return spool


def _careful(job: SmallJob, spool: Spool, store: LocalStore, locks: ShaLocks) -> Outcome:
    """fsync file by file, a failing member dropped, another pair tried; the locks held
    are the job's (``hold`` inside is reentrant)."""
    try:
        for storage in spool.live():
            spool.sync_member(storage)
        if not spool.live():  # the pair failed whole: the body is here, another pair takes it
            spool = hand_on(store, spool, len(job.body), [job.body])
    except Exception as e:
        spool.discard()
        return e
    try:
        return commit(spool, store, locks, job.before_install, job.still_wanted, job.on_damaged)
    except Exception as e:
        return e


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


def _group_commit(items: Sequence[tuple[SmallJob, Spool]],
                  group: GroupSync) -> list[Outcome | None]:
    """Steps 3 to 5 for every item at once (their locks held); per item its outcome,
    or None when the careful way must take over (its temps as they were)."""
    results: list[Outcome | None] = [None] * len(items)
    flushed = _flushed(group, [spool for _, spool in items])
    installed: list[tuple[int, list[str], list[Chain]]] = []
    for k, (job, spool) in enumerate(items):
        if not flushed[k]:
            continue  # the data is not known durable: fsync file by file
        try:
            renamed = _install(job, spool)
        except Exception as e:
            spool.discard()
            results[k] = e
            continue
        if renamed is not None:
            installed.append((k, *renamed))
    entries = _flushed(group, [items[k][1] for k, _, _ in installed])
    for (k, finals, chains), durable in zip(installed, entries):
        spool = items[k][1]
        if not durable:
            _undo(spool, finals)
            continue
        _remember(spool, finals, chains)
        results[k] = Stored(finals, ())
    return results


def _install(job: SmallJob, spool: Spool) -> "tuple[list[str], list[Chain]] | None":
    """Under the job's lock, held since its duplicate check (so nothing was stored or
    deleted meanwhile): the outbox's marker, the directories and the renames (nothing
    fsynced yet); None for the careful way."""
    if job.before_install is not None:
        try:
            job.before_install(job.sha, spool.pair)
        except OSError:
            return None
    return _rename_all(spool)


def _flushed(group: GroupSync, spools: Sequence[Spool]) -> list[bool]:
    """One group round per filesystem for all ``spools``' temps: per spool, whether
    everything written to its temps (and their filesystems) before it is durable."""
    temps = [t for spool in spools for t in spool.temps]
    errors = iter(group.sync_all([t.fd for t in temps], [t.dev for t in temps]) if temps else [])
    return [not any([next(errors) for _ in spool.temps]) for spool in spools]


def _remember(spool: Spool, finals: list[str], chains: list[Chain]) -> None:
    """The installed files and their directories are durable: say so, and let the
    temps go (renamed, nothing left to remove)."""
    for chain in chains:
        for path, ident in chain:
            known_durable(path, ident)
    for temp, final in zip(spool.temps, finals):
        st = os.fstat(temp.fd)
        known_durable(final, (st.st_dev, st.st_ino))
        VERIFIED.record(final, stamp_of(st))  # hashed before install: HEAD may trust it
        KNOWN_SYNCED.add(final, stamp_of(st))  # its data was made durable before the rename
    for temp in spool.temps:
        temp.close()
    spool.discard()


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
