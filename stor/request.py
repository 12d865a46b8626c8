"""A ``twisted.web`` Request whose body streams into an upload as it arrives.

Twisted's own Request spools every body to memory or ``/tmp`` and only then
dispatches it.  :class:`StorRequest` instead asks the site, when the headers
are in (``gotLength``), whether this request is an upload it wants; if so each
chunk goes to :class:`~stor.upload.Upload` (hashed, written to the chosen pair)
and nothing is buffered.  Any other body is dropped: no other route takes one.
"""

import io
from typing import Protocol

from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from stor.upload import Upload


class UploadStarter(Protocol):
    """What the site offers the request: an upload for this request line, or None."""

    def start_upload(
        self, method: bytes, path: bytes, headers: Headers, length: int | None,
        request: "StorRequest",
    ) -> Upload | None: ...


class StorRequest(server.Request):
    """A request that hands its body to an :class:`Upload` chunk by chunk."""

    upload: Upload | None = None

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # stays empty: form parsing finds nothing to parse
        method, path = self._request_line()
        starter: UploadStarter | None = getattr(self.channel.site, "uploads", None)
        if starter is not None and method is not None and path is not None:
            self.upload = starter.start_upload(method, path, self.requestHeaders, length, self)

    def handleContentChunk(self, data: bytes) -> None:
        if self.upload is not None:
            self.upload.feed(data)

    def connectionLost(self, reason: Failure) -> None:
        if self.upload is not None and not self.finished:
            self.upload.abort()
        super().connectionLost(reason)

    def pause_body(self) -> None:
        """Stop reading the body from the network (the disk is behind)."""
        if self.transport is not None:
            self.transport.pauseProducing()

    def resume_body(self) -> None:
        """Read the body again."""
        if self.transport is not None:
            self.transport.resumeProducing()

    def _request_line(self) -> tuple[bytes | None, bytes | None]:
        # The request line is known to the channel when the headers are in, but
        # twisted.web only copies it to the request once the body is complete.
        channel = self.channel
        return getattr(channel, "_command", None), getattr(channel, "_path", None)


class StorSite(server.Site):
    """A Site whose requests stream uploads through ``uploads``."""

    requestFactory = StorRequest

    def __init__(self, resource: object, uploads: UploadStarter, **kwargs: object) -> None:
        super().__init__(resource, **kwargs)
        self.uploads = uploads
