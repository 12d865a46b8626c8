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

    def expect_continue(self, request: "StorRequest", segment: str) -> None: ...


class StorRequest(server.Request):
    """A request that hands its body to an :class:`Upload` chunk by chunk."""

    upload: Upload | None = None
    _body_started = False

    def process(self) -> None:
        if self.finished:  # answered early (Expect: 100-continue); the body was not wanted
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # stays empty: form parsing finds nothing to parse
        method, path = self._request_line()
        starter: UploadStarter | None = getattr(self.channel.site, "uploads", None)
        if starter is None or method is None or path is None:
            return
        self.upload = starter.start_upload(method, path, self.requestHeaders, length, self)
        if method == b"POST" and self._expects_continue():
            # Twisted would send "100 Continue" as soon as this returns; the app
            # decides instead, and may give the final answer without the body.
            self.requestHeaders.removeHeader(b"expect")
            self.method, self.uri = method, path
            self.path = path.split(b"?", 1)[0]
            self.clientproto = getattr(self.channel, "_version", b"HTTP/1.1")
            segment = self.path.lstrip(b"/").decode("latin-1")
            starter.expect_continue(self, segment)

    def _expects_continue(self) -> bool:
        expect = self.requestHeaders.getRawHeaders(b"expect", [b""])[0]
        return (expect.lower() == b"100-continue"
                and getattr(self.channel, "_version", None) == b"HTTP/1.1")

    def send_continue(self) -> None:
        """Tell the client to send the body (unless it has not waited to be told)."""
        if self._disconnected or self.finished or self._body_started or self.transport is None:
            return
        self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def answer_now(self, body: bytes) -> None:
        """Send the final answer before the body, then close: the body is never read."""
        if self._disconnected or self.finished:
            return
        if self.upload is not None:
            self.upload.abort()
        self.channel.persistent = False
        self.setHeader(b"connection", b"close")
        self.write(body)
        self.finish()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_started = True
        if self.upload is not None and not self.finished:
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
