"""The one place where errors become HTTP answers: status, body, metric key, log line.

Bodies are the old service's, byte for byte (docs/SPEC.md §1): clients and the old
service's own tests match on them.  The detail stor knows beyond them goes
into a ``Stor-Reason`` header, never into the body.  The old service also
logged a warning for 404/412/507 and an error for 500 with the texts below;
alerts keyed on those lines keep firing.
"""

from dataclasses import dataclass

from twisted.logger import LogLevel

from stor.core.errors import (
    Busy, Conflict, HashMismatch, MalformedSha, NoSpace, NotAllowed, NotFound, PairLost,
    RangeNotSatisfiable, S3Unavailable, StorError, TooLarge, Unauthorized, UploadAborted,
)

TEXT = b"text/plain; charset=utf-8"
NOT_FOUND_CLASS = "failure::stor::filenotfound"
S3_UNKNOWN_RETRY_AFTER = b"1"
"""Seconds a client waits before asking again after a 503 for an S3 outage;
a balancer does not wait but asks another host (``retry-on 503``)."""
S3_UNKNOWN_HEADER = (b"stor-s3", b"unavailable")
PAIR_LOST_RETRY_AFTER = b"1"
"""Seconds a client waits before sending an upload again whose pair failed under it:
the failed storages are out of placement at once, so the retry goes elsewhere."""
"""Marks the 503 of a local miss while S3 is unknown: ``stor put`` uploads on it."""


@dataclass(frozen=True)
class Answer:
    """Everything a request is told about one error, and what is logged and counted."""

    status: int
    body: bytes
    metric: str | None = None
    headers: tuple[tuple[bytes, bytes], ...] = ()
    level: LogLevel | None = None
    log: str = ""


def family(method: bytes) -> str:
    """The metric family of a method: ``get`` (GET, HEAD), ``post``, ``delete``."""
    return {b"POST": "post", b"DELETE": "delete"}.get(method, "get")


def _caught(cls: str, message: str) -> bytes:
    """A Perl ``failures`` exception as the old service rendered it: ``Caught <class>: <msg>``."""
    return f"Caught {cls}: {message}\n".encode()


def error_answer(error: BaseException, method: bytes, segment: str) -> Answer:
    """The answer to a request of ``method`` on ``/<segment>`` that failed with ``error``."""
    kind = family(method)
    if isinstance(error, MalformedSha):
        if kind == "post":
            return Answer(412, f"Given hash '{segment}' isn't sha256".encode(),
                          "error.post.malformed_sha.count")
        message = f"Given hash '{segment}' isn't SHA256"
        return Answer(404, _caught(NOT_FOUND_CLASS, message), f"error.{kind}.malformed_sha.count",
                      level=LogLevel.warn, log=message)
    if isinstance(error, NotFound):
        message = f"File '{segment}' not found"
        metric = "error.delete.not_found.count" if kind == "delete" else None
        return Answer(404, _caught(NOT_FOUND_CLASS, message), metric,
                      level=LogLevel.warn, log=message)
    if isinstance(error, S3Unavailable):
        return Answer(503, f"S3 unavailable: '{segment}' not found locally\n".encode(),
                      "error.get.s3_unknown.count",
                      ((b"retry-after", S3_UNKNOWN_RETRY_AFTER), S3_UNKNOWN_HEADER),
                      level=LogLevel.warn, log=f"503 {error}")
    if isinstance(error, Unauthorized):
        return Answer(401, b"Authentication required!", f"error.{kind}.unauthorized.count",
                      ((b"www-authenticate", b'Basic realm="stor"'),))
    if isinstance(error, HashMismatch):
        body = f"Content sha256 {error.actual} doesn't match given sha256 {segment}"
        return Answer(412, body.encode(), "error.post.bad_sha.count",
                      level=LogLevel.warn, log=f"412 {body}")
    if isinstance(error, NoSpace):
        page = _caught("failure::stor", "Not enough space on storages")
        return Answer(507, page, "error.post.no_space.count",
                      level=LogLevel.warn, log="507 " + page.decode().rstrip("\n"))
    if isinstance(error, TooLarge):
        return Answer(413, f"Content too large: the limit is {error.limit} bytes\n".encode(),
                      "error.post.too_large.count", level=LogLevel.warn,
                      log=f"413 upload of {segment} over max_upload_size")
    if isinstance(error, RangeNotSatisfiable):
        return Answer(416, f"Range not satisfiable: the file has {error.size} bytes\n".encode(),
                      headers=((b"content-range", b"bytes */%d" % error.size),))
    if isinstance(error, PairLost):
        return Answer(503, b"Storage failed during the upload: try again\n",
                      "error.post.pair_failed.count", ((b"retry-after", PAIR_LOST_RETRY_AFTER),),
                      level=LogLevel.warn, log=f"503 {error}")
    if isinstance(error, Busy):
        return Answer(503, b"Busy: try again later\n", f"error.{kind}.busy.count",
                      ((b"retry-after", b"1"),), level=LogLevel.warn, log=f"503 {error}")
    if isinstance(error, Conflict):
        return Answer(409, b"Deleted while it was uploaded: not stored\n", "error.post.conflict.count",
                      level=LogLevel.warn, log=f"409 upload of {segment} raced a DELETE")
    if isinstance(error, UploadAborted):
        return Answer(400, b"Upload aborted\n", "error.post.unknown.count")
    if isinstance(error, NotAllowed):
        return Answer(405, b"Method Not Allowed\n",
                      headers=((b"allow", b"GET, HEAD, POST"),))
    detail = str(error) if isinstance(error, StorError) else "internal error (logged)"
    metric = "error.post.unknown.count" if kind == "post" else f"error.{kind}.500.count"
    prefix = "500 " if kind == "post" else ""
    return Answer(500, f"{detail}\n".encode(), metric, level=LogLevel.error,
                  log=prefix + detail)


def reason_header(error: BaseException | str) -> bytes:
    """``str(error)`` as a one-line header value (the ``Stor-Reason`` of an answer).

    Only stor's own texts (a :class:`StorError`, or a text stor wrote) are
    shown; a Python exception's text says what a stranger need not know, and
    the log has it.
    """
    if not isinstance(error, (StorError, str)):
        return b"internal error (logged)"
    text = " ".join(str(error).split())[:500]
    return text.encode("latin-1", "replace")

