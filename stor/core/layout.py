"""Where a file lives: the old service's on-disk and S3 layouts, byte for byte.

``<storage>/<AA>/<BB>/<CC>/<SHA>.dat`` with the SHA upper-cased and AA BB CC its
first three byte pairs; S3 keys are the lower-case ``aa/bb/cc/<sha>``.  Below
every storage stor also keeps directories of its own, all starting with a dot
so that they can never be taken for a ``<AA>`` directory.
"""

import os
import re

TEMP_DIR = ".stor-tmp"
"""Files being written; on the storage's filesystem so a rename into place is atomic."""

QUARANTINE_DIR = ".stor-quarantine"
"""Replicas found corrupt, kept for inspection (stor never deletes them)."""

OUTBOX_DIR = ".stor-outbox"
"""Markers of files still to be copied to S3 (write-through)."""

OWN_DIRS = frozenset({TEMP_DIR, QUARANTINE_DIR, OUTBOX_DIR})


def relative_path(sha: str) -> str:
    """The path of ``sha``'s file below a storage directory."""
    upper = sha.upper()
    return os.path.join(upper[0:2], upper[2:4], upper[4:6], upper + ".dat")


def file_path(storage: str, sha: str) -> str:
    """The full path of ``sha``'s file on ``storage``."""
    return os.path.join(storage, relative_path(sha))


def storage_of(path: str, sha: str) -> str | None:
    """The storage directory a path of ``sha``'s file lies in, or None if it is not one."""
    rel = relative_path(sha)
    if not path.endswith(os.sep + rel):
        return None
    return path[: -len(rel) - 1]


def s3_key(sha: str) -> str:
    """The S3 object key of ``sha``."""
    lower = sha.lower()
    return f"{lower[0:2]}/{lower[2:4]}/{lower[4:6]}/{lower}"


def server_name(storage: str) -> str:
    """A storage path as a metric key segment: non-alphanumeric runs become '-'."""
    return re.sub(r"[^0-9A-Za-z]+", "-", storage).strip("-")
