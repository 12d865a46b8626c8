"""Opening and reading files on the reactor thread only when the kernel can
promise not to wait for a disk.

A GET handed to a thread costs a queue hand-off and a reactor wake-up: on a
small file that is more than the work itself.  Linux can say in advance
whether a call would wait for I/O: ``openat2`` with ``RESOLVE_CACHED`` (5.12+)
fails with ``EAGAIN`` unless every path component is in the dentry cache, and
``preadv2`` with ``RWF_NOWAIT`` fails with ``EAGAIN`` unless the data is in the
page cache.  So the reactor tries those first and gives the lookup to a thread
only when the kernel says it would block: the reactor never waits on a disk,
and a warm GET costs no thread hop.  Elsewhere (another OS, an old kernel, a
filesystem that refuses) every call answers :data:`WOULD_BLOCK` and the thread
pool does the work.
"""

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Callable
from typing import Final

WOULD_BLOCK: Final = None
"""Returned when the call could need the disk: do it in a thread instead."""

_SYS_OPENAT2 = 437  # the same number on every Linux architecture
_AT_FDCWD = -100
_RESOLVE_CACHED = 0x20
_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def _load_syscall() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux") or not hasattr(os, "preadv"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_size_t]
    return syscall


_syscall = _load_syscall()
_HOW = struct.pack("QQQ", _FLAGS, 0, _RESOLVE_CACHED)  # struct open_how


def open_cached(path: str) -> int | None:
    """A read-only fd for ``path`` if its lookup needs no I/O, else :data:`WOULD_BLOCK`.

    Raises ``FileNotFoundError`` / ``NotADirectoryError`` (a cached negative
    answer) and other ``OSError`` as ``os.open`` would.
    """
    global _syscall
    syscall = _syscall
    if syscall is None:
        return WOULD_BLOCK
    fd = syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), _HOW, len(_HOW))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err == errno.EAGAIN:
        return WOULD_BLOCK
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.E2BIG):
        _syscall = None  # no openat2 here (or a seccomp filter forbids it): stop trying
        return WOULD_BLOCK
    raise OSError(err, os.strerror(err), path)


def read_cached(fd: int, size: int) -> bytes | None:
    """All ``size`` bytes of ``fd`` if they are in the page cache, else :data:`WOULD_BLOCK`."""
    data = read_at(fd, size + 1, 0)
    if data is None or len(data) != size:
        return WOULD_BLOCK  # partly cached, or the size changed: let a thread read it
    return data


def read_at(fd: int, size: int, offset: int) -> bytes | None:
    """Up to ``size`` bytes at ``offset`` that are already cached, else :data:`WOULD_BLOCK`.

    May return fewer bytes than asked (only part cached); ``b""`` at end of file.
    """
    if _syscall is None:
        return WOULD_BLOCK
    buf = bytearray(size)
    try:
        got = os.preadv(fd, [buf], offset, os.RWF_NOWAIT)
    except BlockingIOError:
        return WOULD_BLOCK
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return WOULD_BLOCK
        raise
    del buf[got:]
    return bytes(buf)
