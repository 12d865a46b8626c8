"""What to do with a request's body, decided once, when its headers are in.

A pure function of the request line and headers: an upload to accept (its
body streams into the store as it arrives), one to refuse (malformed SHA,
missing or wrong credentials: answered without reading the body when the
client asked ``Expect: 100-continue``), or no upload at all (any other body
is read and dropped: no other route takes one).
"""

from dataclasses import dataclass
from urllib.parse import unquote

from twisted.web.http_headers import Headers

from stor.core.errors import MalformedSha, StorError, Unauthorized
from stor.core.sha import parse_sha
from stor.http.auth import authorized


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
    """The decision for a request with this request line and these headers.

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
