"""Errors with a meaning.

Every failure a client can be told about is one of these; the HTTP layer maps
them to status codes in one place (:mod:`stor.app`).  Nothing below the HTTP
layer knows about status codes.
"""


class StorError(Exception):
    """Base of all errors stor answers a request with."""

    headers: tuple[tuple[bytes, bytes], ...] = ()
    """Extra response headers the answer needs."""


class MalformedSha(StorError):
    """The path segment is not 64 hex digits."""

    def __init__(self, segment: str) -> None:
        super().__init__(f"malformed sha256 {segment[:80]!r}: expected 64 hex digits")
        self.segment = segment


class NotFound(StorError):
    """No storage (and no S3 bucket) holds the file."""


class Unauthorized(StorError):
    """Missing or wrong Basic credentials for an upload."""

    headers = ((b"www-authenticate", b'Basic realm="stor"'),)


class RangeNotSatisfiable(StorError):
    """A Range starting past the end of the file."""

    def __init__(self, size: int) -> None:
        super().__init__(f"range not satisfiable: the file has {size} bytes")
        self.headers = ((b"content-range", b"bytes */%d" % size),)


class HashMismatch(StorError):
    """The uploaded body does not hash to the SHA in the URL."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"content sha256 is {actual}, not {expected} as requested")
        self.expected = expected
        self.actual = actual


class NoSpace(StorError):
    """No writable pair has room for the file (or a disk filled up mid-write)."""


class TooLarge(StorError):
    """The body is larger than ``max_upload_size``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"upload larger than max_upload_size ({limit} bytes)")
        self.limit = limit


class StorageFailure(StorError):
    """A storage could not be written or read for a reason other than space."""


class UploadAborted(StorError):
    """The client went away before the body was complete; nothing was kept."""


class ConfigError(Exception):
    """The configuration file cannot be used; ``key`` names where the problem is."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
