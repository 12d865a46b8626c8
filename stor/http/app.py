"""The HTTP layer: routes that translate requests into calls on the store.

Routes know HTTP and nothing else: they parse the path and headers, decide
the headers and status of an answer, and hand bodies to the store, which
holds the whole read and write policy.  This module is the HTTP layer's one
door into the store (seen as :class:`~stor.store.interface.StoreApi`): a
GET/HEAD enters it once, from :meth:`StorApp.read_nowait` when the fast lane saw
the request first (:meth:`StorApp.read` then goes on with that same read) or
from :meth:`StorApp.read`; a POST from :meth:`StorApp.intake` (called by the request
when its headers are in; the request then streams the body into the intake
and :meth:`StorApp.post` waits for its result).  Every error a client can see
becomes its answer in one place (:func:`stor.http.answers.error_answer`,
applied by :meth:`StorApp.answer`); every file answer's headers are built by
one function (:func:`file_headers`).
"""

import functools
import json
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer
from werkzeug.exceptions import HTTPException

from stor import __version__
from stor.core.errors import NotAllowed, StorageFailure, StorError, Unauthorized
from stor.core.metrics import Metrics, NullMetrics
from stor.core.ranges import Selection, etag
from stor.core.results import Duplicate, Stored, UploadResult
from stor.core.sha import parse_sha, sha_of_path
from stor.http.answers import TEXT, Answer, error_answer, reason_header
from stor.http.auth import authorized, user_of
from stor.http.channel import SocketSendfile, describe_peer, is_gone
from stor.http.dates import http_date
from stor.http.handshake import Accepted, Intake, NotAnUpload, decide, segment_of
from stor.http.request import StorRequest
from stor.store.interface import Reading, StoreApi
from stor.core.peer import PEER_HEADER, PEER_LOCAL

log = Logger()

IMMUTABLE = b"public, max-age=31536000, immutable"
JSON = b"application/json"
"""stor's own JSON documents (``/status`` with ``Accept``, ``/openapi.json``)."""
PATHS_JSON = b"application/json;charset=UTF-8"
"""The type of an upload's answer (a JSON array of paths), as the old service
(Mojolicious) sent it."""

HeaderList = tuple[tuple[bytes, bytes], ...]
OCTETS = b"application/octet-stream"

MetricsPage = Callable[[], "Deferred[tuple[bytes, bytes]]"]
"""``GET /metrics``: (content type, body) of the Prometheus exposition."""


def _body(request: IRequest, data: bytes, content_type: bytes = TEXT) -> bytes:
    """``data`` as the whole response body, with its type and length set."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(data))
    request.setHeader(b"x-content-type-options", b"nosniff")  # a quoted segment is no page
    return data


def _wants_json(request: IRequest) -> bool:
    accept = request.getHeader(b"accept") or b""
    return b"application/json" in accept.lower()


def _finished(request: IRequest) -> bool:
    """twisted.web's ``Request.finished`` (Klein types a request as ``IRequest``, which
    does not name it)."""
    return bool(getattr(request, "finished", False))


def _client(request: IRequest) -> str:
    """The client's address, through trusted balancers (:mod:`stor.http.forwarded`)."""
    peer = describe_peer(request.getClientAddress())
    site = getattr(request, "site", None)
    if site is None or not hasattr(site, "client"):
        return peer
    return str(site.client(peer, request.requestHeaders.getRawHeaders(b"x-forwarded-for")))


def file_headers(sha: str, reading: Reading) -> HeaderList:
    """The headers of every 200/206/304 for a stored file (it never changes), in the
    order sent, named as twisted.web spells them: the routes and the fast lane
    (:mod:`stor.http.fastlane`) both send exactly these."""
    part = reading.part
    if part.status == 200:
        return _whole(sha, reading.last_modified, reading.size)
    validators = _validators(sha, reading.last_modified)
    if part.range is None:  # a 304 has no content, so no type or length
        return validators
    return validators + ((b"Content-Type", OCTETS),
                         (b"Content-Range", part.range.content_range()),
                         (b"Content-Length", b"%d" % part.range.length))


def _validators(sha: str, modified: float | bytes) -> HeaderList:
    return ((b"Last-Modified", modified if isinstance(modified, bytes)
             else http_date(int(modified))),
            (b"ETag", etag(sha)), (b"Accept-Ranges", b"bytes"), (b"Cache-Control", IMMUTABLE))


@functools.lru_cache(maxsize=4096)
def _whole(sha: str, modified: float | bytes, size: int) -> HeaderList:
    """A 200's headers, kept for the files read again and again: building them was a
    third of the fast lane's own work (measured), and the same tuple lets the fast lane
    reuse its rendering (:func:`stor.http.fastlane._render`)."""
    return _validators(sha, modified) + ((b"Content-Type", OCTETS),
                                         (b"Content-Length", b"%d" % size))


class FileAnswer(NamedTuple):
    """A whole answer for a stored file, decided and read without waiting (the fast lane's)."""

    status: int
    headers: HeaderList
    body: bytes


class StorApp:
    """The stor HTTP API over the store (:class:`~stor.store.interface.StoreApi`)."""

    app = Klein()

    def __init__(self, store: StoreApi, metrics: Metrics | None = None,
                 metrics_page: MetricsPage | None = None, basic_auth: str | None = None,
                 delete_auth: str | None = None, stopping: Callable[[], bool] = lambda: False,
                 status_extra: Callable[[], dict[str, Any]] = dict,
                 sendfile: bool = True, write_headroom: int = 0) -> None:
        self._store = store
        self._write_headroom = write_headroom
        self.metrics: Metrics = metrics or NullMetrics()
        self._metrics_page = metrics_page
        self._basic_auth = basic_auth
        self._delete_auth = delete_auth
        self._stopping = stopping
        self._status_extra = status_extra
        self._sendfile = sendfile
        self._openapi: bytes | None = None
        self._begun: _Begun | None = None
        """A read the fast lane began and handed on (:meth:`read_nowait`)."""

    def resource(self) -> Resource:
        """The twisted.web resource serving this app."""
        return FastPaths(self, self.app.resource())

    # -- plain routes -------------------------------------------------------

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        return _body(request, f"This is Stor {__version__}".encode())

    @app.route("/status", methods=["GET"])
    async def status(self, request: IRequest) -> bytes:
        """200 ``OK`` when every storage is healthy, else 503 naming each failing one
        (the old service's meaning); as JSON with ``Accept: application/json``.
        Only a 200 counts ``healthcheck.count``: the old service counted a check
        once every storage had passed."""
        try:
            health = await self._store.health()
        except Exception:  # /status answers 503, never 500; the log has the reason
            log.failure("health check failed")
            request.setResponseCode(503)
            return _body(request, b"*: health check failed (logged)\n")
        problems = [(h.path, h.problem) for h in health if h.problem]
        if problems:
            request.setResponseCode(503)
        else:
            self.metrics.incr("healthcheck.count")
        if _wants_json(request):
            doc = {"ok": not problems, "storages": [
                {"path": h.path, "ok": h.ok, "reason": h.problem, "free_bytes": h.free_bytes,
                 "size_bytes": h.size_bytes, "writable": self._store.writable(h.path),
                 "probe": h.probe_json(), "read_faults": h.read_faults_json()}
                for h in health],
                   **self._status_extra()}
            return _body(request, json.dumps(doc, indent=1).encode() + b"\n", JSON)
        if problems:
            return _body(request, "".join(f"{s}: {why}\n" for s, why in problems).encode())
        return _body(request, b"OK")

    @app.route("/health/live", methods=["GET", "HEAD"])
    def live(self, request: IRequest) -> bytes:
        """200 while the process serves: for a supervisor that restarts hung processes."""
        return _body(request, b"OK\n")

    @app.route("/health/ready", methods=["GET", "HEAD"])
    async def ready(self, request: IRequest) -> bytes:
        """200 while this host can serve and store (docs/SPEC.md §9): for a load balancer."""
        reasons = ["stopping"] if self._stopping() else []
        if not reasons:
            reasons = self._store.not_ready(await self._store.health())  # statfs counts
        if reasons:
            request.setResponseCode(503)
            return _body(request, "".join(f"{r}\n" for r in reasons).encode())
        return _body(request, b"OK\n")

    @app.route("/health/write", methods=["GET", "HEAD"])
    async def write_ready(self, request: IRequest) -> bytes:
        """200 while a writable pair has more than ``write_headroom`` free on both
        members (docs/SPEC.md §9): a balancer sends uploads only to such hosts."""
        reasons = ["stopping"] if self._stopping() else []
        if not reasons:
            reasons = await self._store.write_blockers(self._write_headroom)
        if reasons:
            request.setResponseCode(503)
            return _body(request, "".join(f"{r}\n" for r in reasons).encode())
        return _body(request, b"OK\n")

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """This API as an OpenAPI 3 document, its ``info.version`` this server's."""
        if self._openapi is None:
            from importlib.resources import files

            spec = json.loads(files("stor.http").joinpath("openapi.json").read_bytes())
            spec["info"]["version"] = __version__
            self._openapi = json.dumps(spec, indent=1).encode()
        return _body(request, self._openapi, JSON)

    @app.route("/metrics", methods=["GET"])
    async def prometheus(self, request: IRequest) -> bytes:
        """Prometheus text format (see :mod:`stor.observe.prometheus`)."""
        if self._metrics_page is None:
            request.setResponseCode(404)
            return _body(request, b"Not Found\n")
        content_type, page = await self._metrics_page()
        return _body(request, page, content_type)

    # -- files --------------------------------------------------------------

    @app.route("/<segment>", methods=["GET", "HEAD"])
    def get(self, request: IRequest, segment: str) -> "Deferred[bytes]":
        """GET/HEAD of a malformed SHA arrive here; well-formed ones take :class:`FastPaths`."""
        return Deferred.fromCoroutine(self.read(request, segment))

    async def read(self, request: IRequest, segment: str) -> bytes:
        """Answer a GET or HEAD: what to send is the store's decision, how is ours."""
        self.metrics.incr("request.get.count")
        sha = parse_sha(segment)
        begun = self._take_begun(getattr(request, "channel", None), request.method, segment)
        if begun is None:
            header = request.getHeader
            selection = Selection(sha, head=request.method == b"HEAD",
                                  if_none_match=header(b"if-none-match"), range=header(b"range"),
                                  if_range=header(b"if-range"))
            local_only = request.getHeader(PEER_HEADER) == PEER_LOCAL
            begun = self._store.read(selection, segment, local_only)
        reading = await begun
        request.setResponseCode(reading.part.status)
        for name, value in file_headers(sha, reading):
            request.setHeader(name, value)
        try:
            # twisted.web's Request is an IConsumer; Klein types it as IRequest only
            await reading.send(IConsumer(request),
                               SocketSendfile.of(request) if self._sendfile else None)
        except CancelledError:
            pass  # the client went away
        except Exception as e:
            self._cut(request, e)
        return b""

    def read_nowait(self, channel: object, method: bytes, segment: str) -> FileAnswer | None:
        """A plain GET/HEAD of ``/<segment>`` (a well-formed SHA, no header that changes
        the answer) on ``channel``: the store's read of it begins here — its one entry
        for this request.  The whole answer when the store decided it at once and it is
        in memory; else None, and the request takes the ordinary path, where
        :meth:`read` goes on with this very read (never a second one).  The fast
        lane's way in (:mod:`stor.http.fastlane`)."""
        self.drop_begun()
        sha = parse_sha(segment)
        d = self._store.read(Selection(sha, head=method == b"HEAD"), segment, False)
        reading = _result_now(d)
        if reading is None or not reading.in_memory:
            self._begun = _Begun(channel, method, segment, d)
            return None
        self.metrics.incr("request.get.count")
        collected = _Collect()
        reading.send(collected)
        return FileAnswer(reading.part.status, file_headers(sha, reading),
                          b"".join(collected.chunks))

    def _take_begun(self, channel: object, method: bytes,
                    segment: str) -> "Deferred[Reading] | None":
        begun, self._begun = self._begun, None
        if begun is None:
            return None
        if (begun.channel, begun.method, begun.segment) == (channel, method, segment):
            return begun.reading
        _forget(begun.reading)
        return None

    def drop_begun(self) -> None:
        """A read handed on and not taken (its request did not reach :meth:`read`):
        let it go.  The channel calls this after the ordinary path had its turn."""
        begun, self._begun = self._begun, None
        if begun is not None:
            _forget(begun.reading)

    def _cut(self, request: IRequest, error: BaseException) -> None:
        """The body cannot be completed: close the connection so the client sees a
        broken transfer, never a short or wrong body taken for a whole one."""
        if not isinstance(error, StorError):
            log.failure("{uri}: failed mid-response", failure=Failure(error),
                        uri=request.uri.decode("latin-1"))
        if isinstance(request, StorRequest) and not is_gone(request):
            request.cut()

    def intake(self, method: bytes, target: bytes, headers: Headers,
               length: int | None) -> Intake | None:
        """What a request's body is for, asked by the request once its headers are in
        (``target`` routed): an upload's :class:`Intake` (refused, or the store's
        upload), or None when it is not an upload (its body is dropped)."""
        decision = decide(method, target, headers, self._basic_auth)
        if isinstance(decision, NotAnUpload):
            return None
        if isinstance(decision, Accepted):
            return Intake(decision, self._store.upload(decision.sha, length))
        return Intake(decision, None)

    @app.route("/<segment>", methods=["POST"])
    async def post(self, request: IRequest, segment: str) -> bytes:
        """The upload decided when the headers came in (:meth:`intake`), now with its body."""
        self.metrics.incr("request.post.count")
        intake = request.intake if isinstance(request, StorRequest) else None
        if intake is None:
            raise StorageFailure("the request body was not captured")
        result = await intake.result()
        return self._stored(request, result, parse_sha(segment))

    def _stored(self, request: IRequest, result: UploadResult, sha: str) -> bytes:
        if isinstance(result, Duplicate):
            self.metrics.incr("success.post.duplicate.count")
            request.setResponseCode(200)
        else:
            self.metrics.incr("success.post.write.count")
            request.setResponseCode(201)
            log.debug("stored {sha} at {paths}", sha=sha, paths=result.paths)
            if isinstance(result, Stored) and result.failures:
                request.setHeader(b"stor-reason", reason_header(
                    "stored after " + "; ".join(str(f) for f in result.failures)))
        return _body(request, json.dumps(result.paths).encode(), PATHS_JSON)

    @app.route("/<segment>", methods=["DELETE"])
    async def delete(self, request: IRequest, segment: str) -> bytes:
        """Remove a file from this host (and S3), with the ``delete_auth`` credentials."""
        self.metrics.incr("request.delete.count")
        if self._delete_auth is None:
            raise NotAllowed("DELETE is not enabled on this host (no delete_auth)")
        sha = parse_sha(segment)
        if not authorized(request.requestHeaders, self._delete_auth):
            raise Unauthorized("DELETE needs the delete_auth Basic credentials")
        removed = await self._store.delete(sha)
        log.warn("deleted {sha} at the request of {user} from {client} "
                 "({count} local copies: {paths})",
                 sha=sha, user=user_of(request.requestHeaders), client=_client(request),
                 count=len(removed), paths=removed)
        request.setResponseCode(204)
        return b""

    # -- the one place errors become answers --------------------------------

    @app.handle_errors(Exception)
    def answer(self, request: IRequest, failure: Failure) -> bytes:
        """Routing answers (404, 405) pass through; every other error becomes its answer."""
        error = failure.value
        assert error is not None  # a Failure always holds the exception it stands for
        if isinstance(error, HTTPException):
            request.setResponseCode(error.code or 500)
            for name, value in error.get_headers():
                if name.lower() == "allow":  # RFC 9110: a 405 says what is allowed
                    request.setHeader(b"allow", self._allowed(value).encode())
            return _body(request, f"{error.name}\n".encode())
        answer = error_answer(error, request.method, segment_of(request.uri))
        if not isinstance(error, StorError):
            log.failure("{method} {uri} failed", failure=failure,
                        method=request.method.decode("latin-1"),
                        uri=request.uri.decode("latin-1"))
        return self._apply(request, answer, error)

    def _allowed(self, methods: str) -> str:
        """Klein's ``Allow`` value, less DELETE when it is not enabled here."""
        if self._delete_auth is not None:
            return methods
        return ", ".join(m for m in (m.strip() for m in methods.split(",")) if m != "DELETE")

    def _apply(self, request: IRequest, answer: Answer, error: BaseException) -> bytes:
        if answer.metric:
            self.metrics.incr(answer.metric)
        if answer.level is not None:
            log.emit(answer.level, "{old_line}", old_line=answer.log,
                     method=request.method.decode("latin-1"), uri=request.uri.decode("latin-1"))
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name, value)
        request.setHeader(b"stor-reason", reason_header(error))
        return _body(request, answer.body)


_FAST_METHODS = frozenset({b"GET", b"HEAD", b"POST"})


class FastPaths(Resource):
    """The site's root: GET/HEAD and POST of a well-formed SHA skip Klein's routing.

    Those are nearly all the traffic of a storage host, and Klein's per-request
    routing costs about as much as serving a small cached file (and a tenth of
    a small upload's time on the reactor).  They go straight to
    :meth:`StorApp.read` and :meth:`StorApp.post`, with the same answers;
    every other request (including a malformed SHA) is rendered by Klein.
    """

    isLeaf = True

    def __init__(self, app: StorApp, routes: Resource) -> None:
        super().__init__()
        self._app = app
        self._routes = routes

    def render(self, request: IRequest) -> Any:
        method = request.method
        if method in _FAST_METHODS and sha_of_path(request.path) is not None:
            segment = request.path[1:].decode()
            if method == b"POST":
                self._serve(request, self._app.post(request, segment))
            else:
                self._serve(request, self._app.read(request, segment))
            return NOT_DONE_YET
        return self._routes.render(request)

    def _serve(self, request: IRequest, answer: Coroutine[Any, Any, bytes]) -> None:
        d = Deferred.fromCoroutine(answer)
        d.addCallbacks(self._write, self._fail, callbackArgs=(request,), errbackArgs=(request,))

    @staticmethod
    def _write(body: bytes, request: IRequest) -> None:
        abandoned = isinstance(request, StorRequest) and request.abandoned
        if _finished(request) or is_gone(request) or abandoned:
            return
        if body:
            request.write(body)
        request.finish()

    def _fail(self, failure: Failure, request: IRequest) -> None:
        if _finished(request) or is_gone(request):
            return
        self._write(self._app.answer(request, failure), request)


class _Begun(NamedTuple):
    """A read begun by the fast lane for a request it handed on."""

    channel: object
    method: bytes
    segment: str
    reading: "Deferred[Reading]"


def _result_now(d: "Deferred[Reading]") -> Reading | None:
    """``d``'s reading if it has one already (a failure stays in ``d`` for :meth:`read`)."""
    if d.called and isinstance(d.result, Reading):
        return d.result
    return None


def _forget(d: "Deferred[Reading]") -> None:
    """Let a read go that nobody will answer with: cancelled, or its body refused
    (its producer stopped at once, which closes what it holds)."""
    def refuse(reading: Reading) -> None:
        reading.send(_Refuse()).addErrback(lambda failure: None)

    d.addCallbacks(refuse, lambda failure: None)
    d.cancel()


@implementer(IConsumer)
class _Refuse:
    """A consumer that wants nothing: it stops whatever producer offers it a body."""

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        producer.stopProducing()

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


@implementer(IConsumer)
class _Collect:
    """The body of a small file, as the store writes it to a consumer (in one go)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
