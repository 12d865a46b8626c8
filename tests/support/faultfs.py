"""Disk faults through a real filesystem layer: a FUSE passthrough that fails,
delays or corrupts chosen operations (``faultfs.c`` beside this file).

Tests using it belong to the acceptance tier and declare ``"fault-fs"``
(``@pytest.mark.acceptance("stor-process", "fault-fs")``).  Needs root,
``/dev/fuse`` and Debian's ``fuse3 libfuse3-dev pkg-config gcc``
(``make install-test`` installs them).

Usage::

    def test_x(faultfs, tmp_path):
        fs = faultfs()                      # backing dir and mountpoint under tmp_path
        storage = str(fs.mountpoint)        # give this to stor as a storage
        fs.fail("read", path="*.dat")       # every read of a .dat: EIO
        fs.fail("fsync", errno="ENOSPC", count=1)   # the next fsync only
        fs.fail("read", path="*.dat", offset=2**20) # reads covering byte 1 MiB only
        fs.fail("statfs")                   # statvfs(2) on the mount fails
        fs.delay("read", 5.0, path="*/<sha>*")      # reads wait 5 s first
        fs.delay("read", None)              # reads wait until the rule is cleared
        fs.flip(path="*.dat", offset=0)     # bit 0 of byte 0 of every read is flipped
        fs.wait_event("fail", "read")       # until a rule has fired (returns the event)
        rule = fs.fail("open", path="*.dat")  # each rule has a number...
        fs.drop(rule)                       # ...to remove it alone
        fs.clear()                          # every rule gone; stalled reads go on

- ``faultfs(backing=None, mountpoint=None, direct_io=False)``: mounts a
  passthrough of ``backing`` (a new directory by default, 0755) at
  ``mountpoint`` and unmounts it at the end of the test, also when it fails
  (``fusermount3 -u``, lazily ``-uz`` when busy; the daemon is killed if it
  does not exit).  The mount is ``allow_other,default_permissions``: stor
  running as another user (``twistd --uid``) sees the owners and modes of the
  backing directory, and what it creates belongs to it (each request is served
  with the caller's fsuid, fsgid and groups).  Multithreaded.
- Rules: ``op`` is one of :data:`OPS`; ``path`` is an ``fnmatch`` glob on the
  path below the mount, ``"/aa/bb/<sha>.dat"`` (``*`` matches ``/`` too; a path
  under :attr:`FaultFS.mountpoint` given whole is made relative); ``count`` is
  how many times the rule fires (None: until cleared); ``errno`` a name
  (``"EIO"``) or number.  A rename matches on its source or its target.
  Rules change while mounted (a rules file the daemon re-reads, written whole
  and renamed into place), and take effect at the next operation.
- Events: every firing is recorded (``fs.events()``: ``(kind, op, path)``);
  :meth:`FaultFS.wait_event` waits for one instead of sleeping.

The page cache: files are opened with ``keep_cache=0`` (the kernel drops the
file's cached pages at each open), attributes and entries are not cached, and
a file opened while a read or flip rule matches it is opened ``direct_io``, so
its reads reach the daemon whatever the kernel had cached.  ``direct_io=True``
makes every open direct (no page cache at all on that mount).  A file held
open from before a rule was set may still be served from the cache.

The binary is built once per source version (``gcc``, cached by the source's
hash under ``build/faultfs/`` of the checkout, which git ignores).
"""

from __future__ import annotations

import errno as errno_module
import hashlib
import itertools
import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("faultfs.c")
BUILD_ROOT = Path(__file__).resolve().parents[2] / "build" / "faultfs"
OPS = frozenset({"read", "write", "fsync", "fsyncdir", "rename", "statfs", "open", "create",
                 "mkdir", "unlink", "rmdir", "getattr", "truncate", "chmod", "chown", "link",
                 "fallocate"})
READY_TIMEOUT = 30.0


def build() -> Path:
    """The faultfs binary for the current source (compiled when missing)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    binary = BUILD_ROOT / digest / "faultfs"
    if binary.exists():
        return binary
    if shutil.which("gcc") is None or shutil.which("pkg-config") is None:
        pytest.fail("faultfs needs gcc, pkg-config and libfuse3-dev (make install-test)")
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], check=True,
                           capture_output=True, text=True).stdout.split()
    binary.parent.mkdir(parents=True, exist_ok=True)
    temp = binary.with_name(f"faultfs.{os.getpid()}.tmp")
    done = subprocess.run(["gcc", "-Wall", "-Wextra", "-O2", "-o", str(temp), str(SOURCE), *flags],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"building faultfs failed:\n{done.stderr}")
    os.replace(temp, binary)  # several test processes may build at once
    return binary


def _errno(value: str | int) -> int:
    if isinstance(value, int):
        return value
    number = getattr(errno_module, value, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown errno {value!r}")
    return number


class FaultFS:
    """One mounted faultfs: :attr:`backing` seen through :attr:`mountpoint`."""

    _ids = itertools.count(1)

    def __init__(self, backing: Path, mountpoint: Path, control: Path,
                 direct_io: bool = False) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.rules_path = control / "rules"
        self.events_path = control / "events"
        self._rules: list[str] = []
        self._write_rules()
        options = ["allow_other", "default_permissions", "max_threads=32",
                   f"rules={self.rules_path}", f"events={self.events_path}",
                   f"fsname=faultfs:{backing}", "subtype=faultfs"]
        if direct_io:
            options.append("direct_io")
        self.err_path = control / "faultfs.err"
        with open(self.err_path, "wb") as err:
            self.process = subprocess.Popen(
                [str(build()), str(backing), str(mountpoint), "-f", "-o", ",".join(options)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        self._wait_ready()

    # -- rules ---------------------------------------------------------------------

    def fail(self, op: str, errno: str | int = "EIO", path: str = "*",
             count: int | None = None, offset: int | None = None) -> int:
        """``op`` on a path matching ``path`` answers ``errno`` (``count`` times; a
        read or write only when its byte range holds file ``offset``, if given)."""
        return self._add(f"fail {next(self._ids)} {self._op(op)} {_errno(errno)} "
                  f"{self._count(count)} {self._offset(offset)} {self._glob(path)}")

    def delay(self, op: str, seconds: float | None, path: str = "*",
              count: int | None = None, offset: int | None = None) -> int:
        """``op`` on a matching path waits ``seconds`` (None: until the rule is cleared;
        ``offset`` as for :meth:`fail`)."""
        millis = 10**12 if seconds is None else max(0, round(seconds * 1000))
        return self._add(f"delay {next(self._ids)} {self._op(op)} {millis} "
                  f"{self._count(count)} {self._offset(offset)} {self._glob(path)}")

    def flip(self, path: str = "*", offset: int | None = 0, mask: int = 0x01,
             count: int | None = None) -> int:
        """Reads of a matching path return the byte at file ``offset`` XOR ``mask``
        (``offset=None``: every byte); the file itself is untouched."""
        where = -1 if offset is None else offset
        return self._add(f"flip {next(self._ids)} {where} {mask} {self._count(count)} "
                  f"{self._glob(path)}")

    def drop(self, rule: int) -> None:
        """Remove one rule (the number :meth:`fail`, :meth:`delay` or :meth:`flip` returned)."""
        self._rules = [r for r in self._rules if r.split(" ", 2)[1] != str(rule)]
        self._write_rules()

    def clear(self) -> None:
        """No rule any more (a delayed operation in progress goes on within 10 ms)."""
        self._rules = []
        self._write_rules()

    # -- events ----------------------------------------------------------------------

    def events(self) -> list[tuple[str, str, str]]:
        """Every rule that fired so far: ``(kind, op, path)``, oldest first."""
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            kind, op, path = line.split(" ", 2)
            if kind != "ready":
                found.append((kind, op, path))
        return found

    def wait_event(self, kind: str, op: str | None = None, path: str = "*",
                   timeout: float = 30.0, after: int = 0) -> tuple[str, str, str]:
        """The first event (from index ``after``) of ``kind`` on ``op`` and ``path``;
        fails the test when none comes within ``timeout``."""
        glob = self._glob(path)
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events()[after:]:
                if event[0] == kind and op in (None, event[1]) and fnmatchcase(event[2], glob):
                    return event
            if time.monotonic() > deadline:
                pytest.fail(f"faultfs: no {kind} {op or ''} {path} within {timeout} s; "
                            f"events: {self.events()}")
            time.sleep(0.01)

    # -- mount -------------------------------------------------------------------------

    def unmount(self) -> None:
        """Unmount (lazily when busy) and stop the daemon; idempotent."""
        if self.process.poll() is not None and not os.path.ismount(self.mountpoint):
            return
        self.clear()  # a stalled operation would hold the unmount
        fusermount = shutil.which("fusermount3") or "fusermount3"
        if os.path.ismount(self.mountpoint):
            done = subprocess.run([fusermount, "-u", str(self.mountpoint)], capture_output=True)
            if done.returncode != 0:
                subprocess.run([fusermount, "-uz", str(self.mountpoint)], capture_output=True)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                if self.events_path.read_text().startswith("ready"):
                    return
            except FileNotFoundError:
                pass
            if self.process.poll() is not None:
                pytest.fail(f"faultfs exited ({self.process.returncode}): "
                            f"{self.err_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                self.unmount()
                pytest.fail(f"faultfs did not mount {self.mountpoint} within {READY_TIMEOUT} s")
            # the kernel sends INIT as the mount completes; the daemon answers at once
            select.select([], [], [], 0.01)

    # -- helpers -------------------------------------------------------------------------

    def _add(self, rule: str) -> int:
        self._rules.append(rule)
        self._write_rules()
        return int(rule.split(" ", 2)[1])

    def _write_rules(self) -> None:
        temp = self.rules_path.with_name("rules.tmp")
        temp.write_text("".join(f"{r}\n" for r in self._rules))
        os.replace(temp, self.rules_path)

    @staticmethod
    def _op(op: str) -> str:
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}; one of {sorted(OPS)}")
        return op

    @staticmethod
    def _count(count: int | None) -> int:
        return -1 if count is None else count

    @staticmethod
    def _offset(offset: int | None) -> int:
        return -1 if offset is None else offset

    def _glob(self, path: str) -> str:
        mount = str(self.mountpoint)
        if path.startswith(mount + "/"):
            path = path[len(mount):]
        if " " in path or "\n" in path:
            raise ValueError("faultfs globs hold no spaces")
        return path


@pytest.fixture
def faultfs(tmp_path: Path) -> Iterator[Callable[..., FaultFS]]:
    """A factory of faultfs mounts, every one unmounted at the end of the test."""
    mounted: list[FaultFS] = []
    numbers = itertools.count(1)

    def mount(backing: Path | None = None, mountpoint: Path | None = None,
              direct_io: bool = False) -> FaultFS:
        n = next(numbers)
        control = tmp_path / f"faultfs{n}.control"
        control.mkdir()
        if backing is None:
            backing = tmp_path / f"faultfs{n}.backing"
            backing.mkdir(mode=0o755)
        if mountpoint is None:
            mountpoint = tmp_path / f"faultfs{n}"
            mountpoint.mkdir()
        fs = FaultFS(backing, mountpoint, control, direct_io=direct_io)
        mounted.append(fs)
        return fs

    try:
        yield mount
    finally:
        for fs in reversed(mounted):
            fs.unmount()
