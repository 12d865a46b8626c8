"""Small blocking file-system helpers shared by uploads, repair and scrub.

Everything here blocks: call it from the disk pool, never the reactor.
"""

import os


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(path: str) -> None:
    """Make a rename into ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there; cleanup must not hide the error being handled."""
    try:
        os.unlink(path)
    except OSError:
        pass
