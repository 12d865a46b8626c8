"""Writing an upload to a pair, and committing it: the blocking half of an upload.

:class:`Spool` holds an owned temp file on each member of the chosen pair and
writes every chunk of the body to both.  Space is reserved
up front (``fallocate``) for the declared length, so two uploads can never
both count on the same free bytes, whichever process runs them.  A member
that fails while written (EIO, ENOSPC, EROFS, …) is dropped and the other
goes on: one verified copy is enough to finish the upload elsewhere.

:func:`commit` runs once the body hashed to its name: it fsyncs the temps and,
holding the SHA's host-wide lock, checks whether the file is already stored
(on both members of some pair, with its exact bytes, durably:
:mod:`stor.disk.duplicate`) and otherwise installs the temps, over a damaged
replica if one is in the way.  When a
member fails, the verified copy moves on to the next pair before anything is
answered, so a 201 always names two files in place.  When both members fail
before the commit, :func:`hand_on` writes a kept body to another pair (or says
why not: 503, or no pair at all).  Every function here
blocks: the reactor side is :mod:`stor.store.upload`.
"""

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stor.core import layout
from stor.core.errors import Conflict, NoSpace, PairLost, StorageFailure, StorError
from stor.core.placement import Pair
from stor.core.results import Duplicate, FailedMember, Stored, UploadResult
from stor.disk.commit import MemberFailed, install
from stor.disk.duplicate import Damaged
from stor.disk.fsio import (durable_dirs, is_no_space, owner_of, release_beyond, reserve,
                            start_writeback, write_chunks)
from stor.disk.locks import ShaLocks
from stor.disk.temps import OwnedTemp, create_temp
from stor.disk.local import LocalStore
from stor.disk.replica import copy_verified

T = TypeVar("T")

RESERVE_STEP = 64 * 1024 * 1024
"""A body of unknown length (chunked) reserves space in steps of this size (less
when the disk has less left); what it did not use is given back before its fsync."""

WRITEBACK_STEP = 1024 * 1024
"""After this many bytes written, the kernel is asked to start writing them to
disk (without waiting): the fsync before the answer then finds little left to do."""


PLACED_MAX = 16 * 1024 * 1024
"""Largest declared length placed from the recent health answer (:func:`open_spool_placed`);
above it the ``statvfs`` of every storage is noise next to the body."""


BeforeInstall = Callable[[str, Pair], None]
"""Called (blocking, under the SHA's lock) just before a file is installed on a
pair: the S3 outbox records it there."""

OnDamaged = Callable[[str, Damaged], None]
"""Told (blocking, from the pool) of a replica the duplicate check found not to
hash to its name: the caller quarantines it and repairs it from its twin."""

StillWanted = Callable[[str], bool]
"""Asked (blocking, under the SHA's lock) before installing: False when the SHA
was deleted since the upload began, which must not bring it back."""


def _step(storage: str, f: Callable[..., T], *args: Any) -> T:
    try:
        return f(*args)
    except OSError as e:
        raise MemberFailed(storage, e) from e


@dataclass
class Spool:
    """Owned temp files for ``sha`` on the members of ``pair``, being written.

    Writing runs beside the hash (:mod:`stor.store.upload`), and each member
    can be fsynced from its own thread; a member that fails is dropped, under
    a lock, and the other goes on.
    """

    sha: str
    pair: Pair
    length: int | None
    temps: list[OwnedTemp] = field(default_factory=list)
    failures: list[MemberFailed] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._written: dict[str, int] = {}
        self._reserved: dict[str, int] = {}
        self._flushed: dict[str, int] = {}
        self._synced: dict[str, int] = {}
        try:
            for storage in self.pair:
                temp = _step(storage, create_temp, storage, self.sha, owner_of(storage))
                self.temps.append(temp)
                if self.length:
                    _step(storage, reserve, temp.fd, 0, self.length)
                self._written[storage] = self._flushed[storage] = 0
                self._reserved[storage] = self.length or 0
        except MemberFailed:
            self.discard()
            raise

    @property
    def size(self) -> int:
        """Bytes written so far (to the members still written)."""
        return max(self._written.values(), default=0)

    def live(self) -> list[str]:
        """The storages still being written."""
        with self._lock:
            return [t.storage for t in self.temps]

    def write(self, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` to every live temp, in turn (a failing member is dropped)."""
        for storage in self.live():
            self.write_member(storage, chunks)

    def write_member(self, storage: str, chunks: Sequence[bytes]) -> None:
        """Append ``chunks`` to ``storage``'s temp; a failure drops the member."""
        temp = self._temp(storage)
        if temp is None:
            return
        incoming = sum(len(c) for c in chunks)
        try:
            written = self._written[storage]
            if self.length is None and written + incoming > self._reserved[storage]:
                self._reserve_more(storage, temp.fd, written + incoming)
            write_chunks(temp.fd, chunks)
            self._written[storage] = written + incoming
            if self._written[storage] - self._flushed[storage] >= WRITEBACK_STEP:
                start_writeback(temp.fd, self._flushed[storage],
                                self._written[storage] - self._flushed[storage])
                self._flushed[storage] = self._written[storage]
        except OSError as e:
            self._drop(temp, e)

    def _reserve_more(self, storage: str, fd: int, needed: int) -> None:
        """A chunked body outgrew its reservation: reserve another step, or, when
        the disk has less than a step left, just what this write needs (a small
        chunked upload must not need 64 MiB free).  ``OSError`` when not even that."""
        start = self._reserved[storage]
        try:
            reserve(fd, start, RESERVE_STEP)
            self._reserved[storage] = start + RESERVE_STEP
        except OSError as e:
            if not is_no_space(e):
                raise
            reserve(fd, start, needed - start)
            self._reserved[storage] = needed

    def sync_member(self, storage: str) -> None:
        """Make ``storage``'s final directories (durably) and fsync its temp; a failure
        drops the member.

        Run for both members side by side once the body is in: the directories'
        fsyncs then overlap the other member's instead of following them under the
        lock, and no directory is made for a body that never arrives.  Directories
        first measured a little faster (one journal commit can carry both).
        """
        temp = self._temp(storage)
        if temp is None or self._synced.get(storage) == self._written[storage]:
            return  # gone, or nothing written since its last fsync
        try:
            durable_dirs(storage, os.path.dirname(layout.file_path(storage, self.sha)),
                         owner_of(storage))
            release_beyond(temp.fd, self._written[storage], self._reserved[storage])
            self._reserved[storage] = self._written[storage]
            os.fsync(temp.fd)
            self._synced[storage] = self._written[storage]
        except OSError as e:
            self._drop(temp, e)

    def sync(self) -> list[OwnedTemp]:
        """fsync every live temp (a member failing here is dropped); the live ones."""
        for storage in self.live():
            self.sync_member(storage)
        self._check_alive()
        return list(self.temps)

    def discard(self) -> None:
        """Remove every temp file still held; safe to call more than once."""
        with self._lock:
            temps, self.temps = self.temps, []
        for temp in temps:
            temp.discard()

    def _temp(self, storage: str) -> OwnedTemp | None:
        with self._lock:
            return next((t for t in self.temps if t.storage == storage), None)

    def _drop(self, temp: OwnedTemp, error: OSError) -> None:
        with self._lock:
            if temp not in self.temps:
                return
            self.temps.remove(temp)
            self.failures.append(MemberFailed(temp.storage, error))
        temp.discard()

    def _check_alive(self) -> None:
        if not self.temps:
            raise self.failures[-1]


def as_stor_error(failures: Sequence[MemberFailed], size: int = 0) -> StorError:
    """The answer for an upload no storage could take: 507 if only space ran out, else 500."""
    if not failures:
        return NoSpace(f"no writable pair has room for {size} bytes")
    text = "; ".join(str(f) for f in failures)
    if all(is_no_space(f.error) for f in failures):
        return NoSpace(f"no room: {text}")
    return StorageFailure(f"cannot write: {text}")


class NoRoomAtAll(NoSpace):
    """A declared length larger than any writable pair could hold even empty: the
    answer (507) is known before the body, which is then not read."""


def _no_room(store: LocalStore, failures: list[MemberFailed], length: int | None) -> StorError:
    """Why no pair took ``length`` bytes: a storage fault (500 naming the storages) when
    no writable pair is healthy on both members, :class:`NoRoomAtAll` when none ever
    could hold it, else what the attempts met (:func:`as_stor_error`)."""
    if not failures:
        unhealthy = store.unhealthy_writable_blocking()
        if unhealthy is not None:
            return StorageFailure("no writable pair is healthy: " + "; ".join(unhealthy))
        if length and length > store.capacity_blocking():
            return NoRoomAtAll(f"no writable pair can hold {length} bytes")
    return as_stor_error(failures, length or 0)


def open_spool(store: LocalStore, sha: str, length: int | None) -> Spool:
    """Choose a pair with room and open (and reserve) temp files on it.

    A pair where that fails is skipped in favour of the next choice, so one
    bad or full disk does not stop uploads; when no pair is left the answer
    says why (:func:`as_stor_error`).
    """
    excluded: set[Pair] = set()
    failures: list[MemberFailed] = []
    while True:
        try:
            pair = store.choose_pair_blocking(length or 0, excluded)
        except NoSpace:
            raise _no_room(store, failures, length) from None
        try:
            spool = Spool(sha, pair, length)
        except MemberFailed as e:
            failures.append(e)
            excluded.add(pair)
            continue
        spool.failures.extend(failures)
        return spool


def open_spool_placed(store: LocalStore, sha: str, length: int | None) -> Spool:
    """:func:`open_spool` from a health answer at most :data:`~stor.disk.local.
    PLACEMENT_TTL` seconds old for a declared length up to :data:`PLACED_MAX` (no
    ``statvfs`` and ``stat`` of every storage per upload): its reservation of the
    whole length proves the room, and a pair that refuses its temps makes the
    fresh choice, whose errors are the answer.  A body of unknown length, or a
    larger one (whose placement balances the disks), chooses afresh."""
    if length is not None and length <= PLACED_MAX:
        try:
            return Spool(sha, store.choose_pair_cached_blocking(length), length)
        except (MemberFailed, NoSpace):
            store.forget_placement()
    return open_spool(store, sha, length)


def commit(spool: Spool, store: LocalStore, locks: ShaLocks,
           before_install: BeforeInstall | None = None,
           still_wanted: StillWanted | None = None,
           on_damaged: OnDamaged | None = None) -> UploadResult:
    """Blocking: put the verified body in place, or find it already there.

    See the module docstring.  Raises a :class:`~stor.core.errors.StorError`
    when no pair could take the file (or :class:`~stor.core.errors.Conflict`
    when it was deleted meanwhile); the spool's temps are gone either way.
    """
    try:
        return _commit(spool, store, locks, before_install, still_wanted, on_damaged)
    finally:
        spool.discard()


def _commit(spool: Spool, store: LocalStore, locks: ShaLocks,
            before_install: BeforeInstall | None,
            still_wanted: StillWanted | None,
            on_damaged: OnDamaged | None) -> UploadResult:
    temps = spool.sync()
    pair: Pair | None = spool.pair if len(temps) == 2 else None
    tried: set[Pair] = {spool.pair}
    while True:
        if pair is None:
            pair = _another_pair(spool, store, tried)
            temps = spool.temps[-2:]
        with locks.hold(spool.sha):
            if still_wanted is not None and not still_wanted(spool.sha):
                raise Conflict(f"{spool.sha} was deleted while it was uploaded")
            existing = store.existing_blocking(spool.sha)
            if on_damaged is not None:
                for damage in existing.damaged:
                    on_damaged(spool.sha, damage)
            if existing.whole:
                return Duplicate(existing.paths)
            try:
                if before_install is not None:
                    _step(pair[0], before_install, spool.sha, pair)
                return Stored(install(spool.sha, temps), tuple(spool.failures))
            except MemberFailed as e:
                spool.failures.append(e)
                failed = e.storage
        _drop_failed(spool, failed)
        tried.add(pair)
        pair = None


def _drop_failed(spool: Spool, storage: str) -> None:
    for temp in [t for t in spool.temps if t.storage == storage]:
        spool.temps.remove(temp)
        temp.discard()


def _another_pair(spool: Spool, store: LocalStore, tried: set[Pair]) -> Pair:
    """Copy a verified temp to a fresh pair (both new temps appended to the spool)."""
    if not spool.temps:
        raise as_stor_error(spool.failures, spool.size)
    source = spool.temps[0]
    while True:
        try:
            pair = store.choose_pair_blocking(spool.size, tried)
        except NoSpace:
            raise as_stor_error(spool.failures, spool.size) from None
        copies: list[OwnedTemp] = []
        try:
            for storage in pair:
                copies.append(_step(storage, copy_verified, source.fd, source.path, storage,
                                    spool.sha))
        except MemberFailed as e:
            spool.failures.append(e)
            for copy in copies:
                copy.discard()
            tried.add(pair)
            continue
        spool.temps.extend(copies)
        return pair


def hand_on(store: LocalStore, lost: Spool, size: int, body: Sequence[bytes] | None) -> Spool:
    """Blocking: both members of ``lost``'s pair failed before the file was in place (a
    write, an fsync: EIO, ENOSPC, …), its temps are gone.  Each failed storage is set
    aside (out of placement until its probe passes: :meth:`LocalStore.set_aside`).

    With the whole body kept (``body``, ``size`` bytes, already verified against the SHA),
    it is written to another pair and fsynced there; that spool is returned for
    :func:`commit`, with ``lost``'s failures (counted and logged with the result).  A
    pair failing whole again is set aside too and the next one tried.  Without the
    body: :class:`~stor.core.errors.PairLost` (503, the client retries) when another
    pair could take the file.  When no pair can: the 507 or 500 of
    :func:`as_stor_error`.  See docs/durability.rst, "A pair that fails mid-upload".
    """
    failures = list(lost.failures)
    set_aside_failed(store, failures, size)
    tried: set[Pair] = {lost.pair}
    while True:
        try:
            pair = store.choose_pair_blocking(size, tried)
        except NoSpace:
            raise as_stor_error(failures, size) from None
        if body is None:
            raise PairLost(f"{' and '.join(lost.pair)} failed during the upload "
                           f"({'; '.join(str(f) for f in failures)}); another pair can take it")
        try:
            spool = Spool(lost.sha, pair, size)
        except MemberFailed as e:
            failures.append(e)
            set_aside_failed(store, [e], size)
            tried.add(pair)
            continue
        try:
            spool.write(body)
            for storage in spool.live():
                spool.sync_member(storage)
        except BaseException:
            spool.discard()
            raise
        if spool.live():
            spool.failures[:0] = failures
            return spool
        failures += spool.failures
        set_aside_failed(store, spool.failures, size)
        tried.add(pair)


def set_aside_failed(store: LocalStore, failures: Sequence[FailedMember],
                     size: int | None = None) -> None:
    """Each storage that failed an upload leaves placement until its probe passes —
    but not one that merely lacked room for this file: a full disk is no fault, and
    placement already weighs free space (a 45 MiB upload refused by a 40 MiB disk
    must not keep the next 10 MiB one off it).  A no-space failure sets a storage
    aside only when, asked now (blocking: ``size`` given), it still claims room for
    the file and a reservation step, or has no inode left.  Without ``size`` (on the
    reactor) no-space failures are left to placement."""
    for failure in failures:
        if _lacked_room(failure, size):
            continue
        why = str(failure).removeprefix(f"{failure.storage}: ")
        store.set_aside(failure.storage, f"an upload failed on it: {why}")


def _lacked_room(failure: FailedMember, size: int | None) -> bool:
    error = getattr(failure, "error", None)
    if not isinstance(error, OSError) or not is_no_space(error):
        return False
    if size is None:
        return True
    try:
        st = os.statvfs(failure.storage)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < size + RESERVE_STEP and st.f_favail != 0
