"""A ``twisted.web`` Request whose upload body streams into the store as it arrives.

Twisted's own Request spools every body to memory or ``/tmp`` and only then
dispatches it.  :class:`StorRequest` instead decides, when the headers are in
(``gotLength``), what the body is for (:func:`stor.http.handshake.decide`):
an accepted upload gets an :class:`~stor.store.upload.Upload` from the store
and every chunk goes to it as it arrives, with the connection as its
(pausable) producer; any other body is dropped.

The request owns the wire, so it also answers ``Expect: 100-continue``: an
upload the headers already settle (refused, a duplicate, too large, no room)
is processed at once, without its body, and the connection closed after the
answer; any other gets ``100 Continue``.
"""

import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import server

from stor.core.errors import StorError
from stor.core.reactor import Connection
from stor.http.channel import BodyProducer, StorChannel, is_gone, request_line
from stor.http.handshake import Accepted, Decision, NotAnUpload, Refused, decide, expects_continue
from stor.store.upload import Upload


class StorRequest(server.Request):
    """A request that hands its body to an :class:`Upload` chunk by chunk."""

    channel: StorChannel  # what StorSite builds; set by the channel before any call
    transport: Connection | None  # the channel's, None once the request is done
    decision: Decision = NotAnUpload()
    upload: Upload | None = None
    abandoned = False
    """Set when stor cut the connection mid-answer (a body that could not be completed)."""
    _body: BodyProducer | None = None
    _body_started = False
    _answered_early = False
    site_ended: Any = None
    """The site's accounting, told when this request is answered or lost."""

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # stays empty: form parsing finds nothing to parse
        line = request_line(self.channel)
        if line is None:
            return
        method, path, version = line
        site: Any = self.channel.site
        self.decision = decide(method, path, self.requestHeaders, site.basic_auth)
        if isinstance(self.decision, Accepted):
            self.upload = site.store.upload(self.decision.sha, length)
            self._body = BodyProducer(self.channel)
            self.upload.registerProducer(self._body, True)
        if method == b"POST" and expects_continue(self.requestHeaders, version):
            Deferred.fromCoroutine(self._screen()).addErrback(self._screen_failed, line)

    async def _screen(self) -> None:
        """Whether the headers alone settle the answer (the client waits for us)."""
        settled = isinstance(self.decision, Refused)
        if self.upload is not None:
            try:
                settled = await self.upload.screen() is not None
            except StorError:
                settled = True
        if is_gone(self) or self.finished:
            return
        if settled:
            line = request_line(self.channel)
            if line is not None:
                self._answer_early(*line)
        elif not self._body_started:
            self.channel.send_continue()

    def _screen_failed(self, failure: Failure, line: tuple[bytes, bytes, bytes]) -> None:
        if not (is_gone(self) or self.finished):
            self._answer_early(*line)  # the route reports what went wrong

    def _answer_early(self, method: bytes, path: bytes, version: bytes) -> None:
        """Process the request now, without its body; the connection closes after the answer."""
        self.channel.persistent = False
        self.setHeader(b"connection", b"close")
        self.method, self.uri, self.clientproto = method, path, version
        self.path = path.split(b"?", 1)[0]
        self._answered_early = True
        server.Request.process(self)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_started = True
        if self.upload is not None:
            self.upload.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._body is not None:
            self._body.complete()
        super().requestReceived(command, path, version)

    def process(self) -> None:
        if self._answered_early:
            return  # answered before the body; the body was not wanted
        super().process()

    def finish(self) -> None:
        super().finish()
        if self.site_ended is not None:
            self.site_ended(self, True)

    def connectionLost(self, reason: Failure) -> None:
        if self.upload is not None and not self.finished:
            self.upload.abort()
        super().connectionLost(reason)
        if self.site_ended is not None:
            self.site_ended(self, False)

    def cut(self) -> None:
        """End the answer by closing the connection: a short body must never pass
        for a whole one."""
        self.abandoned = True
        if self.transport is not None:
            self.transport.abortConnection()
