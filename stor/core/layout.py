"""Where a file lives: the old service's on-disk and S3 layouts, byte for byte.

``<storage>/<AA>/<BB>/<CC>/<SHA>.dat`` with the SHA upper-cased and AA BB CC its
first three byte pairs; S3 keys are the lower-case ``aa/bb/cc/<sha>``.
"""

import os
import re

from stor.core.errors import MalformedSha

_SHA_RE = re.compile(r"[0-9a-fA-F]{64}")


def parse_sha(segment: str) -> str:
    """Return the normalised (lower-case) SHA, or raise :class:`MalformedSha`."""
    if not _SHA_RE.fullmatch(segment):
        raise MalformedSha(segment)
    return segment.lower()


def relative_path(sha: str) -> str:
    """The path of ``sha``'s file below a storage directory."""
    upper = sha.upper()
    return os.path.join(upper[0:2], upper[2:4], upper[4:6], upper + ".dat")


def file_path(storage: str, sha: str) -> str:
    """The full path of ``sha``'s file on ``storage``."""
    return os.path.join(storage, relative_path(sha))


def s3_key(sha: str) -> str:
    """The S3 object key of ``sha``."""
    lower = sha.lower()
    return f"{lower[0:2]}/{lower[2:4]}/{lower[4:6]}/{lower}"


def server_name(storage: str) -> str:
    """A storage path as a metric key segment: non-alphanumeric runs become '-'."""
    return re.sub(r"[^0-9A-Za-z]+", "-", storage).strip("-")
