"""The HTTP layer: Klein routes that translate requests into calls on plain objects.

Routes know HTTP; :class:`~stor.storage.LocalStore`, the upload machinery,
the metrics, cache, S3 reader and publisher know nothing of it.  Every error
a client can see is a :mod:`stor.errors` exception, mapped to a status code
and a metric key in :func:`error_answer`, the one place that does so.
"""

import json
import re
import time
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import HTTPException

from stor import __version__
from stor.core import layout
from stor.http.auth import authorized
from stor.peers.cache import LocalCache, LookupCache
from stor.config import Config
from stor.core.errors import (
    HashMismatch, MalformedSha, NoSpace, NotFound, RangeNotSatisfiable, StorageFailure, StorError,
    TooLarge, Unauthorized, UploadAborted,
)
from stor.core.ranges import ByteRange, Unsatisfiable, etag, none_match, parse_range
from stor.peers.statsd import Metrics, NullMetrics
from stor.peers.amqp import NoPublisher, Publisher
from stor.store.repair import Repairer
from stor.http.request import StorRequest
from stor.peers.s3 import NoS3
from stor.store.body import FileProducer
from stor.store.local import Hit, LocalStore
from stor.store.upload import Duplicate, Upload, UploadResult

log = Logger()

_SHA_PATH = re.compile(rb"/[0-9a-fA-F]{64}")

# exception → (status, metric key for GET/HEAD, metric key for POST)
_ANSWERS: list[tuple[type[StorError], int, str | None, str | None]] = [
    (MalformedSha, 0, "error.get.malformed_sha.count", "error.post.malformed_sha.count"),
    (NotFound, 404, None, None),
    (RangeNotSatisfiable, 416, None, None),
    (Unauthorized, 401, None, None),
    (HashMismatch, 412, None, "error.post.bad_sha.count"),
    (NoSpace, 507, None, "error.post.no_space.count"),
    (TooLarge, 413, None, "error.post.too_large.count"),
    (UploadAborted, 400, None, "error.post.unknown.count"),
    (StorageFailure, 500, "error.get.500.count", "error.post.unknown.count"),
]


def error_answer(error: BaseException, method: bytes) -> tuple[int, str | None]:
    """The status code and metric key for ``error`` on a request of ``method``."""
    is_post = method == b"POST"
    for kind, status, get_key, post_key in _ANSWERS:
        if isinstance(error, kind):
            if kind is MalformedSha:  # the old service: 412 for an upload, 404 for a read
                status = 412 if is_post else 404
            return status, post_key if is_post else get_key
    return 500, "error.post.unknown.count" if is_post else "error.get.500.count"


TEXT = b"text/plain; charset=utf-8"


def _body(request: IRequest, data: bytes, content_type: bytes = TEXT) -> bytes:
    """``data`` as the whole response body, with its type and length set."""
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(data))
    return data


IMMUTABLE = b"public, max-age=31536000, immutable"


def _content_headers(request: IRequest, sha: str, last_modified: bytes) -> None:
    """Headers of every 200/206/304 for a stored file: it never changes."""
    request.setHeader(b"content-type", b"application/octet-stream")
    request.setHeader(b"last-modified", last_modified)
    request.setHeader(b"etag", etag(sha))
    request.setHeader(b"accept-ranges", b"bytes")
    request.setHeader(b"cache-control", IMMUTABLE)


def _elapsed_ms(start: float) -> float:
    return (time.monotonic() - start) * 1000.0


class StorApp:
    """The stor HTTP API over local storage pairs and optional integrations."""

    app = Klein()

    def __init__(
        self,
        config: Config,
        store: LocalStore,
        metrics: Metrics | None = None,
        cache: LookupCache | None = None,
        s3: Any = None,
        publisher: Publisher | None = None,
        repairer: Repairer | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics: Metrics = metrics or NullMetrics()
        self.cache: LookupCache = cache or LocalCache()
        self.s3 = s3 or NoS3()
        self.publisher: Publisher = publisher or NoPublisher()
        self.repairer = repairer
        self.lookups = 0
        """Full lookups over the pairs so far (the cache saves these)."""

    def resource(self) -> Any:
        """The twisted.web resource serving this app."""
        return FastGet(self, self.app.resource())

    # -- uploads, started by StorRequest when the headers are in ------------

    def start_upload(
        self, method: bytes, path: bytes, headers: Headers, length: int | None,
        request: StorRequest,
    ) -> Upload | None:
        """An :class:`Upload` for a POST this app will accept, else None (body dropped)."""
        if method != b"POST":
            return None
        segment = path.split(b"?", 1)[0].lstrip(b"/").decode("latin-1")
        try:
            sha = layout.parse_sha(segment)
        except MalformedSha:
            return None
        if not authorized(headers, self.config.basic_auth):
            return None
        return Upload(
            sha, length, self.store, request.pause_body, request.resume_body,
            max_size=self.config.max_upload_size,
        )

    # -- routes -------------------------------------------------------------

    @app.route("/", methods=["GET"])
    def index(self, request: IRequest) -> bytes:
        return _body(request, f"This is Stor {__version__}".encode())

    @app.route("/status", methods=["GET"])
    @inlineCallbacks
    def status(self, request: IRequest):  # type: ignore[no-untyped-def]
        self.metrics.incr("healthcheck.count")
        try:
            problems = yield self.store.problems()
        except Exception as e:  # /status answers 503, never 500
            problems = [("*", f"health check failed: {e}")]
        if not problems:
            return _body(request, b"OK")
        request.setResponseCode(503)
        return _body(request, "".join(f"{s}: {why}\n" for s, why in problems).encode())

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """This API as an OpenAPI 3 document: ``stor/openapi.json``, read on first use,
        its ``info.version`` this server's."""
        doc = getattr(self, "_openapi_doc", None)
        if doc is None:
            from importlib.resources import files

            spec = json.loads(files("stor.http").joinpath("openapi.json").read_bytes())
            spec["info"]["version"] = __version__
            doc = self._openapi_doc = json.dumps(spec, indent=1).encode()
        return _body(request, doc, b"application/json")

    @app.route("/<segment>", methods=["GET", "HEAD"])
    def get(self, request: IRequest, segment: str) -> "Deferred[Any]":
        """GET/HEAD of a malformed SHA arrive here; well-formed ones take :class:`FastGet`."""
        return Deferred.fromCoroutine(self.read(request, segment))

    async def read(self, request: IRequest, segment: str) -> Any:
        """Answer a GET or HEAD: S3 first when enabled, then the cache, then the pairs."""
        self.metrics.incr("request.get.count")
        sha = layout.parse_sha(segment)
        self.publisher.publish(segment)
        head = request.method == b"HEAD"
        start = time.monotonic()
        if await self._send_s3(request, sha, head, start):
            return b""
        hit = await self._find_local(sha, head)
        if hit is None:
            self.metrics.incr("error.get.not_found_old.count")
            raise NotFound(f"{sha} not found")
        result = await self._send(request, hit, sha)
        server = layout.server_name(hit.storage)
        self.metrics.incr(f"success.get.ok_old.{server}.count")
        self.metrics.incr(f"success.get.ok_old.{server}.size", hit.size)
        self.metrics.timing(f"success.get.ok_old.{server}.time", _elapsed_ms(start))
        return result

    async def _find_local(self, sha: str, head: bool) -> Hit | None:
        """The cached path if it still holds the file, else a lookup (then cached)."""
        start = time.monotonic()
        path = await self.cache.get(sha)
        self.metrics.timing("cache.time", _elapsed_ms(start))
        if path is not None:
            hit = await self.store.open_path(path, sha, head)
            if hit is not None:
                self.metrics.incr("cache.hit")
                return hit
            self.cache.drop(sha)  # deleted or moved behind our back: look again
        self.metrics.incr("cache.miss")
        start = time.monotonic()
        hit = await (self.store.stat(sha) if head else self.store.open(sha))
        self.metrics.timing("lookup.time", _elapsed_ms(start))
        self.lookups += 1
        if hit is not None:
            self.metrics.incr(f"lookup.attempt.{hit.attempt}.count")
            self.cache.put(sha, hit.path)
            if self.repairer is not None:
                self.repairer.found(sha, hit.storage, hit.path)
        return hit

    async def _send_s3(self, request: IRequest, sha: str, head: bool, start: float) -> bool:
        """Serve ``sha`` from S3 if it has it; False to fall through to the local storages.

        A plain GET is one request to S3, its body verified against the SHA while
        relayed.  A conditional or ranged GET first asks S3 with HEAD, decides
        304/416/206 as for a local file, then fetches only what is needed.
        """
        plain = not head and not request.getHeader(b"if-none-match") and not request.getHeader(b"range")
        obj = await self.s3.fetch(sha, not plain)
        if obj is None:
            return False
        status, wanted = self._decide(request, sha, obj.size)
        if status != 304 and not head and not plain:
            obj = await self.s3.fetch(sha, False, wanted)  # the body, or only its range
            if obj is None:
                return False
        _content_headers(request, sha, obj.last_modified)
        request.setResponseCode(status)
        if status == 304:
            request.responseHeaders.removeHeader(b"content-type")
        if wanted is not None:
            request.setHeader(b"content-range", wanted.content_range())
        if status != 304:
            request.setHeader(b"content-length", b"%d" % (wanted.length if wanted else obj.size))
        if head or status == 304:
            obj.discard()
        else:
            await obj.deliver(request)
        self.metrics.incr("success.get.ok_hcp.count")
        self.metrics.incr("success.get.ok_hcp.size", obj.size)
        self.metrics.timing("success.get.ok_hcp.time", _elapsed_ms(start))
        return True

    @staticmethod
    def _decide(request: IRequest, sha: str, size: int) -> tuple[int, ByteRange | None]:
        """304, 206 with its range, or 200, for a file of ``size`` bytes; 416 raises."""
        if none_match(request.getHeader(b"if-none-match"), sha):
            return 304, None
        try:
            wanted = parse_range(request.getHeader(b"range"), size,
                                 request.getHeader(b"if-range"), sha)
        except Unsatisfiable:
            raise RangeNotSatisfiable(size) from None
        return (200, None) if wanted is None else (206, wanted)

    def _send(self, request: IRequest, hit: Hit, sha: str) -> "Deferred[Any]":
        """The file (or the range asked for) with its validators; 304 when the
        client already has it."""
        try:
            status, wanted = self._decide(request, sha, hit.size)
        except RangeNotSatisfiable:
            hit.close()
            raise
        _content_headers(request, sha, datetimeToString(hit.mtime))
        request.setResponseCode(status)
        if status == 304:
            hit.close()
            request.responseHeaders.removeHeader(b"content-type")  # a 304 has no content
            return succeed(b"")
        offset, length = 0, hit.size
        if wanted is not None:
            request.setHeader(b"content-range", wanted.content_range())
            offset, length = wanted.first, wanted.length
        request.setHeader(b"content-length", b"%d" % length)
        if hit.data is not None:
            return succeed(hit.data[offset:offset + length])
        if hit.file is None:  # HEAD
            return succeed(b"")
        return FileProducer(hit.file, length, request, self.store.run, offset).start()

    @app.route("/<segment>", methods=["POST"])
    def post(self, request: StorRequest, segment: str) -> "Deferred[bytes]":
        return Deferred.fromCoroutine(self._post(request, segment))

    async def _post(self, request: StorRequest, segment: str) -> bytes:
        """The body has arrived (and been hashed and spooled): verify and commit."""
        self.metrics.incr("request.post.count")
        upload = self._accepted(request, segment)
        return self._stored(request, await upload.finish(), upload)

    def _accepted(self, request: StorRequest, segment: str) -> Upload:
        """The upload of a POST that passes the checks made on its headers alone."""
        layout.parse_sha(segment)
        if not authorized(request.requestHeaders, self.config.basic_auth):
            raise Unauthorized("upload needs valid Basic credentials")
        if request.upload is None:
            raise StorageFailure("the request body was not captured")
        return request.upload

    def _stored(self, request: IRequest, result: UploadResult, upload: Upload) -> bytes:
        if isinstance(result, Duplicate):
            self.metrics.incr("success.post.duplicate.count")
            request.setResponseCode(200)
        else:
            self.metrics.incr("success.post.write.count")
            request.setResponseCode(201)
            log.info("stored {sha} ({size} bytes) at {paths}", sha=upload.sha,
                     size=upload.received, paths=result.paths)
        return _body(request, json.dumps(result.paths).encode(), b"application/json")

    # -- Expect: 100-continue -------------------------------------------------

    def expect_continue(self, request: StorRequest, segment: str) -> None:
        """Answer an upload that will be refused before its body is sent.

        Everything but the hash check can be decided from the headers: a
        malformed SHA, bad credentials, a duplicate, a body over
        ``max_upload_size``, no pair with room.  Those get their final answer
        now (and the connection is closed, the body unread); anything else gets
        ``100 Continue``.
        """
        d = Deferred.fromCoroutine(self._screen(request, segment))
        d.addCallbacks(self._screened, self._refused, callbackArgs=(request,),
                       errbackArgs=(request,))

    async def _screen(self, request: StorRequest, segment: str) -> UploadResult | None:
        upload = self._accepted(request, segment)
        return await upload.screen()

    def _screened(self, result: UploadResult | None, request: StorRequest) -> None:
        if result is None:
            request.send_continue()
            return
        self.metrics.incr("request.post.count")
        assert request.upload is not None
        request.answer_now(self._stored(request, result, request.upload))

    def _refused(self, failure: Failure, request: StorRequest) -> None:
        self.metrics.incr("request.post.count")
        if isinstance(failure.value, StorError):
            request.answer_now(self.answer_error(request, failure))
        else:
            request.answer_now(self.answer_unexpected(request, failure))

    # -- the one place errors become answers --------------------------------

    @app.handle_errors(StorError)
    def answer_error(self, request: IRequest, failure: Failure) -> bytes:
        """Every :class:`StorError` becomes its status, metric and a text reason."""
        status, key = error_answer(failure.value, request.method)
        if key:
            self.metrics.incr(key)
        request.setResponseCode(status)
        for name, value in failure.value.headers:
            request.setHeader(name, value)
        if status >= 500:
            log.error("{method} {uri}: {error}", method=request.method.decode(),
                      uri=request.uri.decode("latin-1"), error=str(failure.value))
        return _body(request, (str(failure.value) + "\n").encode())

    @app.handle_errors(Exception)
    def answer_unexpected(self, request: IRequest, failure: Failure) -> bytes:
        """Routing answers (404, 405) pass through; anything else is a logged 500."""
        if isinstance(failure.value, HTTPException):
            request.setResponseCode(failure.value.code or 500)
            for name, value in failure.value.get_headers():
                if name.lower() == "allow":  # RFC 9110: a 405 says what is allowed
                    request.setHeader(b"allow", value.encode())
            return _body(request, f"{failure.value.name}\n".encode())
        is_post = request.method == b"POST"
        self.metrics.incr("error.post.unknown.count" if is_post else "error.get.500.count")
        log.failure("{method} {uri} failed", failure=failure, method=request.method.decode(),
                    uri=request.uri.decode("latin-1"))
        request.setResponseCode(500)
        return _body(request, b"internal error (logged)\n")

    # -- operations -----------------------------------------------------------

    @app.route("/metrics", methods=["GET"])
    def prometheus_metrics(self, request: IRequest) -> "Deferred[bytes]":
        """Prometheus text format (see :mod:`stor.prometheus`)."""
        from stor.ops.prometheus import exporter_for  # here: app.py stays free of prometheus-client

        return exporter_for(self).render(request)


class FastGet(Resource):
    """The site's root: GET/HEAD of a well-formed SHA skip Klein's routing.

    Those are nearly all the traffic of a storage host, and Klein's per-request
    routing costs about as much as serving a small cached file.  They go
    straight to :meth:`StorApp.read`, with the same error answers; every other
    request (including a malformed SHA) is rendered by Klein.
    """

    isLeaf = True

    def __init__(self, app: StorApp, routes: Resource) -> None:
        super().__init__()
        self._app = app
        self._routes = routes

    def render(self, request: IRequest) -> Any:
        path = request.path
        if (request.method in (b"GET", b"HEAD") and len(path) == 65
                and _SHA_PATH.fullmatch(path)):
            d = Deferred.fromCoroutine(self._app.read(request, path[1:].decode()))
            d.addCallbacks(self._write, self._fail, callbackArgs=(request,),
                           errbackArgs=(request,))
            return NOT_DONE_YET
        return self._routes.render(request)

    @staticmethod
    def _write(body: bytes, request: IRequest) -> None:
        if request.finished or request._disconnected:  # type: ignore[attr-defined]
            return
        if body:
            request.write(body)
        request.finish()

    def _fail(self, failure: Failure, request: IRequest) -> None:
        if request.finished or request._disconnected:  # type: ignore[attr-defined]
            return  # the client went away mid-stream: nothing left to tell it
        if request.startedWriting:  # type: ignore[attr-defined]
            # a short body must never pass for a whole one: break the transfer
            if not isinstance(failure.value, StorError):  # StorErrors are logged where raised
                log.failure("{uri}: failed mid-response", failure=failure,
                            uri=request.uri.decode("latin-1"))
            request.transport.abortConnection()  # type: ignore[attr-defined]
            return
        if isinstance(failure.value, StorError):
            body = self._app.answer_error(request, failure)
        else:
            body = self._app.answer_unexpected(request, failure)
        self._write(body, request)
