"""The store as the HTTP layer sees it: the one door into the storage tiers.

The routes (:mod:`stor.http.app`) call the store through :class:`StoreApi`
and nothing else: a read returns a :class:`Reading`, an upload a
:class:`UploadHandle` fed chunk by chunk, which ends in an
:data:`~stor.core.results.UploadResult`.  The HTTP layer imports this module
and :mod:`stor.core` only (``tests/test_architecture.py``), so a change in the
disk, S3 or cache tiers cannot reach the routes except through these names.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure

from stor.core.ranges import Part, Selection
from stor.core.results import Duplicate, Stored, UploadResult
from stor.disk.body import Body, BytesBody, FileBody, SendTarget
from stor.disk.health import StorageHealth

__all__ = ["Duplicate", "Reading", "SendTarget", "StorageHealth", "Stored", "StoreApi",
           "UploadHandle", "UploadResult"]


@dataclass
class Reading:
    """A read answered: what to send for the file, and the body to send it with.

    ``part`` says 200 (whole), 206 (a range) or 304; ``size`` is the whole
    file's.  :meth:`send` must be called once (it sends nothing for a HEAD or
    a 304); its Deferred fails if the body cannot be completed.
    """

    size: int
    last_modified: float | bytes
    """The file's mtime (local) or S3's ``Last-Modified`` header value."""
    part: Part
    body: Body | None
    _ended: Callable[["None | Failure"], None] = field(repr=False)
    _call_from_thread: Callable[..., object] | None = field(default=None, repr=False)

    @property
    def in_memory(self) -> bool:
        """Whether :meth:`send` writes the whole body at once (nothing, or bytes
        already read and verified): what the fast lane can answer with."""
        return self.body is None or isinstance(self.body, BytesBody)

    def send(self, consumer: IConsumer, sendfile: SendTarget | None = None) -> "Deferred[None]":
        """Write the body to ``consumer`` (``sendfile``: the kernel may send a large
        local file straight to the connection instead)."""
        if self.body is None:
            self._ended(None)
            return succeed(None)
        if isinstance(self.body, FileBody):
            d = self.body.write_to(consumer, sendfile, self._call_from_thread)
        else:
            d = self.body.write_to(consumer)
        d.addBoth(self._end)
        return d

    def _end(self, result: "None | Failure") -> "None | Failure":
        self._ended(result)
        return result


class UploadHandle(Protocol):
    """One upload's body on its way into the store (:class:`stor.store.upload.Upload`).

    The request writes the body to it as it arrives and registers the
    connection as its producer (paused when the disks are behind).
    """

    received: int
    """Body bytes received so far."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def write(self, data: bytes) -> None: ...

    async def screen(self) -> UploadResult | None:
        """Before the body (``Expect: 100-continue``): the answer if the headers
        settle it (raises the error that does), else None."""

    async def refused_before_body(self) -> bool:
        """Whether the headers alone refuse this upload whatever its body (413, or 507
        for a length no writable pair can hold): then it is answered at once."""

    async def finish(self) -> UploadResult:
        """The whole body is in: the verified, committed result."""

    def abort(self) -> None:
        """The client went away: leave nothing behind."""


class StoreApi(Protocol):
    """Everything the HTTP layer asks of the store (:class:`stor.store.store.Store`)."""

    def read(self, selection: Selection, requested: str,
             local_only: bool = False) -> "Deferred[Reading]":
        """The answer to a GET/HEAD of ``selection``; fails with NotFound (or
        S3Unavailable); ``local_only``: from this host's disks alone (a fleet peer
        asking).  Fired on return when the store decided without waiting."""

    def upload(self, sha: str, length: int | None) -> UploadHandle:
        """Start receiving the body of ``sha`` (``length``: its declared size, if any)."""

    async def delete(self, sha: str) -> list[str]:
        """Remove ``sha`` everywhere; the local paths removed."""

    def health(self, with_free: bool = True) -> "Deferred[list[StorageHealth]]":
        """Every storage as seen now."""

    def writable(self, storage: str) -> bool:
        """Whether ``storage`` may take new files (``writable_pairs_regex``)."""

    def not_ready(self, health: list[StorageHealth]) -> list[str]:
        """Why this host should get no traffic (empty: ready)."""

    async def write_blockers(self, headroom: int) -> list[str]:
        """Why this host should get no uploads (empty: write-ready, ``write_headroom``)."""
