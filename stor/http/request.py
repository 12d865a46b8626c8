"""A ``twisted.web`` Request whose upload body streams into the store as it arrives.

Twisted's own Request spools every body to memory or ``/tmp`` and only then
dispatches it.  :class:`StorRequest` instead asks the routes, when the
headers are in (``gotLength``), what the body is for (its ``open_intake``,
given by the site: :meth:`stor.http.app.StorApp.intake`): an upload's
:class:`~stor.http.handshake.Intake` gets every chunk as it arrives, with the
connection as its (pausable) producer; any other body is dropped.  The
request never sees the store: it holds the intake and streams bytes.

The request owns the wire, so it also answers ``Expect: 100-continue``: an
upload the headers already settle (refused, a duplicate, too large, no room)
is processed at once, without its body, and the connection closed after the
answer; any other gets ``100 Continue``.

Its target is routed as the old service routed it
(:func:`~stor.http.handshake.route_target`): ``uri`` and ``path`` are the
routed ones from the start.
"""

import io
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.http_headers import Headers

from stor.core.reactor import Connection
from stor.http.channel import BodyProducer, StorChannel, is_gone, request_line
from stor.http.handshake import Intake, expects_continue, route_target

OpenIntake = Callable[[bytes, bytes, Headers, "int | None"], "Intake | None"]
"""(method, routed target, headers, declared length) → the body's intake, or None
(not an upload: the body is dropped)."""

Ended = Callable[["StorRequest", bool], None]
"""Told once when a request is answered (True) or its connection lost (False)."""


class StorRequest(server.Request):
    """A request that hands its body to an :class:`Intake` chunk by chunk."""

    channel: StorChannel  # what StorSite builds; set by the channel before any call
    transport: Connection | None  # the channel's, None once the request is done
    intake: Intake | None = None
    """The upload this request's body is for (None: not an upload)."""
    open_intake: OpenIntake | None = None
    """Set by the site: the routes' :meth:`~stor.http.app.StorApp.intake`."""
    site_ended: Ended | None = None
    """The site's accounting, told when this request is answered or lost."""
    abandoned = False
    """Set when stor cut the connection mid-answer (a body that could not be completed)."""
    _body: BodyProducer | None = None
    _body_started = False
    _answered_early = False

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        """twisted's, but its ``Server: TwistedWeb/<version>`` is the site's ``server_header``."""
        if isinstance(name, bytes) and name.lower() == b"server":
            channel = self.channel
            value = getattr(getattr(channel, "site", None), "server_header", b"stor")
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()  # stays empty: form parsing finds nothing to parse
        line = request_line(self.channel)
        if line is None or self.open_intake is None:
            return
        method, target, version = line
        self.intake = self.open_intake(method, route_target(target), self.requestHeaders, length)
        if self.intake is None:
            return
        self._body = BodyProducer(self.channel)
        self.intake.attach(self._body)
        if expects_continue(self.requestHeaders, version):
            Deferred.fromCoroutine(self._screen(self.intake)).addErrback(self._screen_failed, line)
        else:
            Deferred.fromCoroutine(self._refuse_at_once(self.intake)).addErrback(
                self._screen_failed, line)

    async def _refuse_at_once(self, intake: Intake) -> None:
        """Without ``Expect``: answer now when no body could change the answer (413,
        or 507 for a length no pair can hold), instead of reading it all first."""
        refused = await intake.refused_before_body()
        line = request_line(self.channel) if not (is_gone(self) or self.finished) else None
        if refused and line is not None:
            self._answer_early(*line)

    async def _screen(self, intake: Intake) -> None:
        """Whether the headers alone settle the answer (the client waits for us)."""
        settled = await intake.settled()
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

    def _answer_early(self, method: bytes, target: bytes, version: bytes) -> None:
        """Process the request now, without its body; the connection closes after the answer."""
        self.channel.persistent = False
        self.setHeader(b"connection", b"close")
        self.method, self.uri, self.clientproto = method, route_target(target), version
        self.path = self.uri.split(b"?", 1)[0]
        self._answered_early = True
        server.Request.process(self)

    def handleContentChunk(self, data: bytes) -> None:
        self._body_started = True
        if self.intake is not None:
            self.intake.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._body is not None:
            self._body.complete()
        super().requestReceived(command, route_target(path), version)

    def process(self) -> None:
        if self._answered_early:
            return  # answered before the body; the body was not wanted
        super().process()

    def finish(self) -> None:
        super().finish()
        if self.site_ended is not None:
            self.site_ended(self, True)

    def connectionLost(self, reason: Failure) -> None:
        if self.intake is not None and not self.finished:
            self.intake.abort()
        super().connectionLost(reason)
        if self.site_ended is not None:
            self.site_ended(self, False)

    def cut(self) -> None:
        """End the answer by closing the connection: a short body must never pass
        for a whole one."""
        self.abandoned = True
        if self.transport is not None:
            self.transport.abortConnection()
