"""What a request is for, decided once, when its headers are in.

:func:`route_target` turns a request target into the one the routes see (the
old service's routing: absolute-form targets and one trailing slash).
:func:`decide` is a pure function of the request line and headers: an upload
to accept (its body streams into the store as it arrives), one to refuse
(malformed SHA, missing or wrong credentials: answered without reading the
body when the client asked ``Expect: 100-continue``), or no upload at all (any
other body is read and dropped: no other route takes one).  An upload's
:class:`Intake` is what the request holds of it: the decision and the store's
upload, both given by the routes.
"""

import re
from dataclasses import dataclass
from urllib.parse import unquote

from twisted.internet.interfaces import IPushProducer
from twisted.web.http_headers import Headers

from stor.core.errors import MalformedSha, StorError, Unauthorized
from stor.core.results import UploadResult
from stor.core.sha import parse_sha
from stor.http.auth import authorized
from stor.store.interface import UploadHandle

_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*")
"""The scheme and authority of an absolute-form target (RFC 9112 §3.2.2)."""


def route_target(target: bytes) -> bytes:
    """``target`` as the routes see it, as the old service (Mojolicious 9) routed it:
    an absolute-form target by its path (``http://host/SHA`` → ``/SHA``), and one
    trailing slash ignored (``/status/`` → ``/status``); the query is kept."""
    scheme = _ABSOLUTE.match(target)
    if scheme is not None:
        target = target[scheme.end():]
        if not target.startswith(b"/"):
            target = b"/" + target
    path, question, query = target.partition(b"?")
    if len(path) > 1 and path.endswith(b"/"):
        path = path[:-1]
    return path + question + query


@dataclass(frozen=True)
class NotAnUpload:
    """Not a POST to a file: its body, if any, is dropped."""


@dataclass(frozen=True)
class Refused:
    """An upload refused on its headers alone."""

    error: StorError


@dataclass(frozen=True)
class Accepted:
    """An upload of ``sha`` (normalised) with valid credentials."""

    sha: str


Decision = NotAnUpload | Refused | Accepted


def segment_of(path: bytes) -> str:
    """The path's segment as requested: query dropped, %-escapes decoded, case kept
    (what the old service quoted back in its answers)."""
    return unquote(path.split(b"?", 1)[0].lstrip(b"/").decode("latin-1"), errors="replace")


def decide(method: bytes, path: bytes, headers: Headers, basic_auth: str | None) -> Decision:
    """The decision for a request with this request line (routed) and these headers.

    The checks keep the old service's order: a malformed SHA (412) before
    missing credentials (401).
    """
    if method != b"POST":
        return NotAnUpload()
    try:
        sha = parse_sha(segment_of(path))
    except MalformedSha as e:
        return Refused(e)
    if not authorized(headers, basic_auth):
        return Refused(Unauthorized("upload needs valid Basic credentials"))
    return Accepted(sha)


def expects_continue(headers: Headers, version: bytes) -> bool:
    """Whether an HTTP/1.1 client waits for ``100 Continue`` before sending the body."""
    expect = headers.getRawHeaders(b"expect", [b""])[0]
    return expect.lower() == b"100-continue" and version == b"HTTP/1.1"


class Intake:
    """A POST's body, as its request holds it: the decision on its headers and, for an
    accepted upload, the store's upload the body streams into (both made by the routes,
    :meth:`stor.http.app.StorApp.intake`)."""

    def __init__(self, decision: Refused | Accepted, upload: UploadHandle | None) -> None:
        self.decision = decision
        self._upload = upload

    @property
    def received(self) -> int:
        """Body bytes received (0 for a refused upload: its body is dropped)."""
        return self._upload.received if self._upload is not None else 0

    def attach(self, producer: IPushProducer) -> None:
        """The connection, paused when the disks are behind."""
        if self._upload is not None:
            self._upload.registerProducer(producer, True)

    def write(self, data: bytes) -> None:
        if self._upload is not None:
            self._upload.write(data)

    def abort(self) -> None:
        """The client went away before the answer."""
        if self._upload is not None:
            self._upload.abort()

    async def settled(self) -> bool:
        """Whether the headers alone settle the answer (``Expect: 100-continue``)."""
        if self._upload is None:
            return True  # refused
        try:
            return await self._upload.screen() is not None
        except StorError:
            return True

    async def refused_before_body(self) -> bool:
        """Whether an accepted upload's headers alone refuse it whatever its body (too
        large for ``max_upload_size`` or for any writable pair): answered at once."""
        if self._upload is None:
            return False  # refused: its answer comes from the route, as before
        return await self._upload.refused_before_body()

    async def result(self) -> UploadResult:
        """The stored or duplicate file, once the whole body is in; raises the
        refusal or the upload's error."""
        if isinstance(self.decision, Refused):
            raise self.decision.error
        assert self._upload is not None  # an accepted upload always has one
        return await self._upload.finish()
