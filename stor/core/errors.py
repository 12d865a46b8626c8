"""Errors with a meaning.

Every failure a client can be told about is one of these; the HTTP layer maps
them to status codes, bodies and metric keys in one place
(:mod:`stor.http.answers`).  Nothing below the HTTP layer knows about status
codes.  ``str(error)`` is the detail for logs and the ``Stor-Reason`` header.
"""

from collections.abc import Sequence
from dataclasses import dataclass


class StorError(Exception):
    """Base of all errors stor answers a request with."""


class MalformedSha(StorError):
    """The path segment is not 64 hex digits."""

    def __init__(self, segment: str) -> None:
        super().__init__(f"malformed sha256 {segment[:80]!r}: expected 64 hex digits")
        self.segment = segment


class NotFound(StorError):
    """No storage (and no S3 bucket) holds the file."""

    def __init__(self, sha: str) -> None:
        super().__init__(f"{sha} not found")
        self.sha = sha


class S3Unavailable(StorError):
    """S3 could not say whether it has the file (a timeout, a refused connection,
    a 5xx), and no local storage has it: the file may exist, so this is not a
    404 but an answer a balancer retries on another host (docs/fleet-operations.rst)."""

    def __init__(self, sha: str, why: str) -> None:
        super().__init__(f"S3 unavailable ({why}) and {sha} not found locally")
        self.sha = sha
        self.why = why


class Unauthorized(StorError):
    """Missing or wrong Basic credentials."""


class RangeNotSatisfiable(StorError):
    """A Range starting past the end of the file: 416."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable: the file has {size} bytes")
        self.size = size


class HashMismatch(StorError):
    """The uploaded body does not hash to the SHA in the URL."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"content sha256 is {actual}, not {expected} as requested")
        self.expected = expected
        self.actual = actual


class NoSpace(StorError):
    """No writable pair has room for the file (or every candidate filled up)."""


class TooLarge(StorError):
    """The body is larger than ``max_upload_size``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload larger than max_upload_size ({limit} bytes)")
        self.limit = limit


class StorageFailure(StorError):
    """A storage could not be written or read for a reason other than space."""


class CorruptReplica(StorageFailure):
    """A replica being served turned out not to hash to its name."""

    def __init__(self, path: str, actual: str) -> None:
        super().__init__(f"{path} hashes to {actual}")
        self.path = path
        self.actual = actual


class PairLost(StorError):
    """Both members of the pair an upload was being written to failed before it was in
    place (EIO, ENOSPC, …), and its body was too large to have been kept and handed on
    to another pair (docs/durability.rst): those storages take no new files until their
    probe passes, so the client's retry lands on another pair (503, ``Retry-After``)."""


class Busy(StorError):
    """A resource stayed held past a bounded wait (a SHA's lock): retry later (503)."""


class Conflict(StorError):
    """The file was deleted while this upload was under way: it is not stored."""


class UploadAborted(StorError):
    """The client went away (or stopped sending) before the body was complete."""


class NotAllowed(StorError):
    """The method is not enabled on this host (DELETE without ``delete_auth``)."""


@dataclass(frozen=True)
class Problem:
    """One finding about one config key; ``key`` is empty for the file as a whole."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` says every reason, each with its key."""

    def __init__(self, key: str, message: str = "", *,
                 problems: Sequence[Problem] = ()) -> None:
        self.problems = tuple(problems) or (Problem(key, message),)
        super().__init__("\n".join(str(p) for p in self.problems))
        self.key = self.problems[0].key

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> "ConfigError":
        """One error carrying every problem found in a file."""
        return cls("", problems=problems)
