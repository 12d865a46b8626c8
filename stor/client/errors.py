"""What can go wrong with one item, as the client reports it.

Every item ends as one line ``<sha>  <name>  <status>[  <reason>]``: the
status is the HTTP status when the server decided, else a word (``error``,
``mismatch``, ``locked``).  Whether a failure deserves another attempt is
decided here, once, by the exception's type.
"""

from twisted.internet import error as net
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web import client as web

NOT_RETRIED = frozenset({501, 505, 507})
"""5xx answers that another attempt will not change (507: the server has no room)."""

SELF_EXPLAINED = frozenset({401, 404, 413, 416, 507})
"""Statuses our own words explain; for the others the server's text is added."""

REASONS = {
    400: "bad request",
    401: "authentication required or refused (--auth USER:PASS or STOR_AUTH)",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    413: "file larger than the server accepts (max_upload_size)",
    416: "range not satisfiable",
    500: "server error",
    502: "bad gateway",
    503: "server unavailable",
    504: "gateway timeout",
    507: "no space left on the server",
}


class ItemFailed(Exception):
    """One item (a file to put, a SHA to get) failed; the others go on."""

    status = "error"
    retryable = False
    retry_after: float | None = None

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ServerAnswer(ItemFailed):
    """The server answered with a status that ends (4xx) or delays (5xx) the item."""

    def __init__(self, code: int, detail: str = "", retry_after: float | None = None) -> None:
        reason = REASONS.get(code, "unexpected answer")
        if detail and code not in SELF_EXPLAINED:
            reason = f"{reason}: {detail}"
        super().__init__(reason)
        self.code = code
        self.status = str(code)
        self.retryable = code >= 500 and code not in NOT_RETRIED
        self.retry_after = retry_after


class Transient(ItemFailed):
    """The connection failed (refused, lost, timed out): worth another attempt."""

    retryable = True


class BadRange(ItemFailed):
    """A ranged answer that cannot continue the ``.part``: restart from zero."""

    retryable = True


class Mismatch(ItemFailed):
    """The bytes received do not hash to the SHA asked for."""

    status = "mismatch"

    def __init__(self, reason: str, retryable: bool) -> None:
        super().__init__(reason)
        self.retryable = retryable


class FileChanged(ItemFailed):
    """The local file changed between hashing it and uploading it."""

    def __init__(self, reason: str, status: str = "error") -> None:
        super().__init__(reason)
        self.status = status


class PartBusy(ItemFailed):
    """Another ``stor get`` holds the lock on this ``.part`` file."""

    status = "locked"


class LocalFailure(ItemFailed):
    """A local file could not be read or written (the disk, permissions)."""

    @classmethod
    def from_os_error(cls, e: OSError) -> "LocalFailure":
        where = f"{e.filename}: " if e.filename else ""
        return cls(f"{where}{e.strerror or e}")


def connection_failure(failure: Failure, timeout: float) -> ItemFailed:
    """The :class:`ItemFailed` a network-level failure of a request stands for."""
    inner = _innermost(failure)
    if isinstance(inner.value, ItemFailed):
        return inner.value  # raised by our own producer or sink
    if isinstance(inner.value, OSError) and not inner.check(net.ConnectError):
        return LocalFailure.from_os_error(inner.value)
    if inner.check(net.ConnectionRefusedError):
        return Transient("connection refused")
    if inner.check(net.DNSLookupError):
        return Transient("host not found")
    if inner.check(net.TimeoutError, net.TCPTimedOutError, net.ConnectingCancelledError):
        return Transient("connection timed out")
    if inner.check(net.ConnectError):
        return Transient(f"cannot connect: {inner.getErrorMessage()}")
    if inner.check(CancelledError):
        return Transient(f"no answer within {timeout:g} s")
    return Transient("connection lost")


def _innermost(failure: Failure) -> Failure:
    """Twisted wraps the cause in ``ResponseFailed([...])`` and friends: unwrap it."""
    while isinstance(failure.value, (web.ResponseFailed, web.ResponseNeverReceived,
                                     web.RequestTransmissionFailed, web.RequestGenerationFailed)):
        reasons = failure.value.reasons
        if not reasons:
            break
        failure = reasons[0]
    return failure

