"""The S3 read-through (docs/SPEC.md §3): ask a bucket before the local storages.

An S3 outage must never turn a locally stored file into an error, and must
never turn a file S3 may hold into a 404 (docs/SPEC.md §9).  So
:meth:`S3Reader.fetch` answers one of three things: an :class:`S3Object`
(found), None (S3 says it has no such object: a 404, or any other 4xx,
a 403 logged as the configuration error it is), or it fails with
:class:`~stor.core.errors.S3Unavailable` when S3 cannot say (a timeout, a
refused or broken connection, a 5xx, a malformed 200).  The store then looks
on the local disks, and only a local miss turns that failure into the
retryable 503.

After a timeout S3 is taken for down (:class:`_Outage`): further lookups do
not wait for it again but fail at once, while one background probe at a time
(at most one per ``PROBE_INTERVAL`` seconds, started by demand) asks S3 until
it answers anything at all.

A found object is relayed to a consumer (the client's request) chunk by chunk
with back-pressure and hashed on the way.  The last chunk is held back until
the whole body is known to hash to the SHA it was asked for, so a client can
never receive a complete file with the wrong content: on a mismatch (or a
body cut short) the delivery fails before that chunk, and the HTTP layer cuts
the connection so the client sees a broken transfer.

Requests are signed with botocore's own S3 SigV4 signer (no botocore HTTP
stack: it blocks) and sent with treq over a persistent connection pool.
"""

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IConsumer, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent, HTTPConnectionPool, RequestTransmissionFailed, ResponseDone, ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from stor.core import layout
from stor.core.ranges import ByteRange
from stor.config import Config, S3Config
from stor.core.errors import S3Unavailable, StorageFailure
from stor.core.metrics import Metrics
from stor.core.reactor import Connection, Reactor
from stor.s3.sign import Signer

log = Logger()

BAD_SHA_LIMIT = 10_000  # remembered bad objects, oldest forgotten first
DRAIN_LIMIT = 64 * 1024  # an error body larger than this is cut off rather than read
SNIPPET = 512  # bytes of an error body kept for the log line
POOL_SIZE = 10  # idle persistent connections kept to the endpoint
PROBE_INTERVAL = 1.0  # seconds between probes of an S3 that timed out

NOT_FOUND = "error.get.not_found_hcp.count"
ERROR = "error.get.hcp_error.count"
BAD_SHA = "error.get.hcp_bad_sha.count"


def s3_client(config: S3Config, reactor: Reactor,
              pool: HTTPConnectionPool | None = None) -> HTTPClient:
    """A treq client for ``config``'s endpoint: persistent pool, connect timeout.

    Pass ``pool`` to be able to close its idle connections (tests, shutdown).
    """
    if pool is None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = POOL_SIZE
    agent = Agent(reactor, connectTimeout=config.connect_timeout, pool=pool)
    return HTTPClient(agent)


def build_s3(config: Config, reactor: Reactor, metrics: Metrics) -> "S3Reader | NoS3":
    """The reader the config asks for: a real one, or one that never finds anything."""
    if config.s3 is None or not config.s3.read_through:
        return NoS3()
    return S3Reader(config.s3, s3_client(config.s3, reactor), reactor, metrics)


class NoS3:
    """S3 is not configured: every lookup goes straight to the local storages."""

    def fetch(self, sha: str, head: bool) -> "Deferred[None]":
        return succeed(None)


class S3Object:
    """An object S3 has answered 200 for; its body (GET only) is not read yet.

    Exactly one of :meth:`deliver` or :meth:`discard` must be called for a GET
    answer: until then the S3 connection is held open and paused.
    """

    def __init__(self, sha: str, size: int, last_modified: bytes,
                 relay: "_Relay | None") -> None:
        self.sha = sha
        self.size = size
        self.last_modified = last_modified
        self._relay = relay

    def write_to(self, consumer: IConsumer) -> "Deferred[None]":
        """Stream the verified body into ``consumer``; fires when all of it is written.

        Fails with :class:`~stor.core.errors.StorageFailure` if the body does not
        hash to :attr:`sha` or S3 breaks off (the last chunk is then never
        written), and with ``CancelledError`` if the consumer stops it (the
        client went away; S3 is then no longer read).
        """
        if self._relay is None:
            raise RuntimeError("a HEAD answer has no body to deliver")
        return self._relay.attach(consumer)

    def discard(self) -> None:
        """The body will not be read (HEAD, or the route answers otherwise): let go of it."""
        if self._relay is not None:
            self._relay.discard()


class S3Reader:
    """Looks objects up in one bucket; see the module docstring for the failure policy."""

    not_found_key = NOT_FOUND
    error_key = ERROR
    bad_sha_key = BAD_SHA
    what = "S3"

    def __init__(self, config: S3Config, client: HTTPClient, reactor: Reactor,
                 metrics: Metrics) -> None:
        self._config = config
        self._client = client
        self._reactor = reactor
        self._metrics = metrics
        self._signer = Signer(config.access_key, config.secret_key, config.region)
        self._bad: OrderedDict[str, None] = OrderedDict()
        self._outage = _Outage(reactor, self.what)

    @property
    def down(self) -> bool:
        """True from a timeout until S3 answers again (lookups then fail at once)."""
        return self._outage.down

    def when_up(self) -> "Deferred[None]":
        """Fires when S3 is not (or no longer) taken for down."""
        return self._outage.when_up()

    def fetch(self, sha: str, head: bool,
              byte_range: ByteRange | None = None) -> "Deferred[S3Object | None]":
        """HEAD or GET ``sha``'s object; None when S3 says it does not have it,
        :class:`~stor.core.errors.S3Unavailable` when it cannot say.

        A GET fires as soon as the headers are in (first-byte timeout
        ``config.timeout``); the body waits, paused, for :meth:`S3Object.deliver`.
        With ``byte_range`` only those bytes are asked for (S3 answers 206); a
        part cannot be checked against the SHA, so it is relayed unverified.
        """
        sha = sha.lower()
        if sha in self._bad:
            return succeed(None)
        if self._outage.down:
            self._outage.probe(lambda: self._request("HEAD", sha))
            return fail(S3Unavailable(sha, self._outage.why))
        method = "HEAD" if head else "GET"
        asking: Deferred[Any] = maybeDeferred(self._request, method, sha, byte_range)
        cancelled_by_caller = False

        def cancel(_: object) -> None:
            nonlocal cancelled_by_caller
            cancelled_by_caller = True
            asking.cancel()

        answer: Deferred[S3Object | None] = Deferred(cancel)
        asking.addCallback(self._answered, sha, head, byte_range)
        asking.addErrback(self._failed, sha, method, lambda: cancelled_by_caller)
        asking.addBoth(_hand_over, answer)
        return answer

    def url(self, sha: str) -> str:
        """The path-style URL of ``sha``'s object."""
        bucket = quote(self._config.bucket, safe="")
        return f"{self._config.endpoint}/{bucket}/{layout.s3_key(sha)}"

    def signed_headers(self, method: str, url: str) -> Headers:
        """SigV4 headers for a body-less request, exactly as botocore's S3 signer makes them.

        For a request without a body botocore signs the empty payload's hash
        (``X-Amz-Content-SHA256: e3b0c4…``), over http and https alike; the
        ``Host`` it signs is the one twisted's Agent sends (default port omitted).
        """
        return self._signer.headers(method, url)

    # -- internals ----------------------------------------------------------

    def _request(self, method: str, sha: str,
                 byte_range: ByteRange | None = None) -> "Deferred[IResponse]":
        url = self.url(sha)
        headers = self.signed_headers(method, url)
        if byte_range is not None:  # unsigned: SigV4 need not cover every header
            headers.setRawHeaders(b"range", [b"bytes=%d-%d" % (byte_range.first, byte_range.last)])
        # treq's _Response provides IResponse, but Deferred is invariant
        return self._client.request(  # type: ignore[return-value]  # (above)
            method, url, headers=headers,
            allow_redirects=False, unbuffered=True,
            reactor=self._reactor, timeout=self._config.timeout,
        )

    def _answered(self, response: IResponse, sha: str, head: bool,
                  byte_range: ByteRange | None = None) -> S3Object | None:
        method = "HEAD" if head else "GET"
        self._outage.answered()
        if response.code == 404:
            self._metrics.incr(self.not_found_key)
            _drain(response, self._reactor, self._config.timeout)
            return None
        if response.code != (206 if byte_range is not None else 200):
            self._metrics.incr(self.error_key)
            drained = _drain(response, self._reactor, self._config.timeout)
            drained.addCallback(self._log_refusal, response, sha, method)
            if response.code >= 500:  # S3 has a problem: the object may well be there
                raise S3Unavailable(sha, f"S3 answered {response.code}")
            return None  # S3 refuses to say: not found, and the log names the cause
        try:
            size, last_modified = _object_headers(response, head)
        except ValueError as e:
            _drain(response, self._reactor, self._config.timeout, limit=0)
            raise StorageFailure(str(e)) from None
        if head:
            _drain(response, self._reactor, self._config.timeout)
            return S3Object(sha, size, last_modified, None)
        relay = _Relay(self, sha, size, self._reactor, self._config.timeout,
                       verify=byte_range is None)
        response.deliverBody(relay)
        return S3Object(sha, size, last_modified, relay)

    def _failed(self, failure: Failure, sha: str, method: str,
                cancelled_by_caller: Callable[[], bool]) -> None:
        if cancelled_by_caller():  # the client went away: not S3's fault, nothing to count
            raise CancelledError(f"S3 {method} {sha} cancelled")
        if failure.check(S3Unavailable):  # a 5xx, counted and logged already
            failure.raiseException()
        self._metrics.incr(self.error_key)
        why = _describe(failure, self._config.timeout)
        log.warn("{what} {method} {url} failed: {why}",
                 what=self.what, method=method, url=self.url(sha), why=why)
        if _timed_out(failure):
            self._outage.trip(why)
        raise S3Unavailable(sha, why)

    def _log_refusal(self, body: bytes, response: IResponse, sha: str, method: str) -> None:
        code = _error_code(body)
        if response.code == 403:
            log.error("{what} {method} {url} answered {status} Forbidden{code}: a "
                      "configuration error (s3_credentials, s3_region or the bucket's "
                      "policy); answering 404",
                      what=self.what, method=method, url=self.url(sha), status=response.code,
                      code=f" ({code})" if code else "")
            return
        log.warn("{what} {method} {url} answered {status} {phrase}{code}",
                 what=self.what, method=method, url=self.url(sha), status=response.code,
                 phrase=response.phrase.decode("latin-1"), code=f" ({code})" if code else "")

    def _bad_body(self, sha: str, actual: str, sent: int) -> StorageFailure:
        """The body does not hash to its name: never serve this object from S3 again."""
        self._metrics.incr(self.bad_sha_key)
        self._bad[sha] = None
        while len(self._bad) > BAD_SHA_LIMIT:
            self._bad.popitem(last=False)
        log.warn("{what} object {url} has sha256 {actual}: transfer aborted after {sent} bytes, "
                 "no longer asking for it", what=self.what, url=self.url(sha), actual=actual,
                 sent=sent)
        return StorageFailure(f"S3 object {sha} has sha256 {actual}")

    def _broken_body(self, sha: str, why: str, received: int, size: int) -> StorageFailure:
        """S3 broke off mid-body: a network problem, not the object's fault."""
        self._metrics.incr(self.error_key)
        log.warn("{what} GET {url} broke off after {received} of {size} bytes: {why}",
                 what=self.what, url=self.url(sha), received=received, size=size, why=why)
        return StorageFailure(f"S3 GET {sha} broke off after {received} of {size} bytes")


class _Outage:
    """Whether S3 is down since a timeout, and the one probe that finds it back.

    No timer outlives a request: a probe is started by a lookup made while S3
    is down (at most one at a time, one per :data:`PROBE_INTERVAL`), and any
    HTTP answer to any request (the probe's or another) ends the outage.
    """

    def __init__(self, reactor: IReactorTime, what: str = "S3") -> None:
        self._reactor = reactor
        self._what = what
        self.why = ""
        self.down = False
        self._since = 0.0
        self._probing = False
        self._last_probe = 0.0
        self._waiting: list[Deferred[None]] = []

    def when_up(self) -> "Deferred[None]":
        if not self.down:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def trip(self, why: str) -> None:
        if not self.down:
            log.warn("{what} taken for down ({why}): not asked again until it answers a probe",
                     what=self._what, why=why)
            self._since = self._reactor.seconds()
            self._last_probe = self._since
        self.down, self.why = True, why

    def answered(self) -> None:
        if self.down:
            log.info("{what} answers again after {seconds:.1f}s", what=self._what,
                     seconds=self._reactor.seconds() - self._since)
        self.down = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def probe(self, ask: "Callable[[], Deferred[IResponse]]") -> None:
        now = self._reactor.seconds()
        if self._probing or now - self._last_probe < PROBE_INTERVAL:
            return
        self._probing, self._last_probe = True, now
        d = maybeDeferred(ask)
        d.addCallback(self._probed)
        d.addErrback(lambda _: None)  # still down: the next lookup probes again
        d.addBoth(self._probe_over)

    def _probed(self, response: IResponse) -> None:
        self.answered()
        _drain(response, self._reactor, 1.0)

    def _probe_over(self, _: object) -> None:
        self._probing = False


@implementer(IPushProducer)
class _Relay(Protocol):
    """Receives one S3 body and relays it, verified, into a consumer.

    Paused from the moment the headers are in until :meth:`attach`; then the
    client's transport drives pause/resume of the S3 connection.  The most
    recent chunk is always held back, and only written once the body has
    ended and hashes to ``sha``.
    """

    def __init__(self, reader: S3Reader, sha: str, size: int, reactor: IReactorTime,
                 idle_timeout: float, verify: bool = True) -> None:
        self._verify = verify
        self._reader = reader
        self._sha = sha
        self._size = size
        self._reactor = reactor
        self._idle_timeout = idle_timeout
        self._hash = hashlib.sha256()
        self._received = 0
        self._held: bytes | None = None
        self._pending: list[bytes] = []  # released before a request was attached
        self._ended: Failure | None = None
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._paused = False  # by the client
        self._over = False  # concluded, discarded or abandoned: ignore further events
        self._client_gone = False
        self._idle: IDelayedCall | None = None
        self._stalled = False

    # -- the S3 side (IProtocol) -------------------------------------------

    def connectionMade(self) -> None:
        # the S3 connection's producer side (pause/resume/stop)
        self._s3: IPushProducer = cast(IPushProducer, self.transport)
        self._s3.pauseProducing()  # nobody to write to yet

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        self._hash.update(data)
        self._received += len(data)
        if self._held:
            self._release(self._held)
        self._held = data
        self._arm_idle()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm_idle()
        if self._over:
            return
        self._ended = reason
        if self._consumer is not None:
            self._conclude()

    # -- the client side (IPushProducer) -----------------------------------

    def attach(self, consumer: IConsumer) -> "Deferred[None]":
        """Start relaying into ``consumer``; the returned Deferred fires at the end.

        Cancelling it (the client went away) stops reading S3.
        """
        if self._consumer is not None or self._over:
            raise RuntimeError("an S3 body can be delivered once")
        self._consumer = consumer
        self._done = Deferred(lambda _: self._abandon())
        consumer.registerProducer(self, True)
        pending, self._pending = self._pending, []
        for chunk in pending:
            consumer.write(chunk)
        if self._ended is not None:
            self._conclude()
        elif not self._paused and not self._over:
            self._s3.resumeProducing()
            self._arm_idle()
        return self._done

    def pauseProducing(self) -> None:
        self._paused = True
        self._disarm_idle()
        if not self._over and self._ended is None:
            self._s3.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if not self._over and self._ended is None and self._consumer is not None:
            self._s3.resumeProducing()
            self._arm_idle()

    def stopProducing(self) -> None:
        """The client connection is going away: stop reading S3."""
        self._abandon()

    def discard(self) -> None:
        """Not going to deliver: close the S3 connection unless the body is already in."""
        if self._over:
            return
        self._over = True
        self._pending = []
        self._held = None
        self._disarm_idle()
        if self._ended is None:
            self._s3.stopProducing()

    # -- internals ----------------------------------------------------------

    def _release(self, chunk: bytes) -> None:
        if self._consumer is None:
            self._pending.append(chunk)
        else:
            self._consumer.write(chunk)

    def _conclude(self) -> None:
        """The body has ended and a request is attached: finish or fail it."""
        assert self._ended is not None
        actual = self._hash.hexdigest()
        if not self._ended.check(ResponseDone):
            why = (f"no data for {self._idle_timeout:g}s" if self._stalled
                   else _describe(self._ended, self._idle_timeout))
            self._fail(self._reader._broken_body(self._sha, why, self._received, self._size))
        elif self._verify and actual != self._sha:
            sent = self._received - len(self._held or b"")
            self._fail(self._reader._bad_body(self._sha, actual, sent))
        else:
            if self._held:
                self._release(self._held)
            self._finish(None)

    def _fail(self, error: StorageFailure) -> None:
        """Never let the client take a short or wrong body for a whole one: the
        held-back chunk is dropped and the delivery fails (the HTTP layer cuts
        the connection)."""
        self._held = None
        self._finish(error)

    def _finish(self, error: BaseException | None) -> None:
        self._over = True
        self._disarm_idle()
        if self._consumer is not None and not self._client_gone:
            self._consumer.unregisterProducer()
        assert self._done is not None
        if self._done.called:
            return
        if error is None:
            self._done.callback(None)
        else:
            self._done.errback(error)

    def _abandon(self) -> None:
        """The client went away (or the delivery was cancelled): drop the S3 connection."""
        self._client_gone = True
        if self._over:
            return
        self._over = True
        self._disarm_idle()
        self._held = None
        if self._ended is None:
            self._s3.stopProducing()
        if self._done is not None and not self._done.called:
            self._done.errback(CancelledError("the client went away"))

    def _arm_idle(self) -> None:
        """S3 must keep sending while the client is reading; a stalled body is cut."""
        if self._over or self._paused or self._consumer is None or self._ended is not None:
            return
        if self._idle is not None and self._idle.active():
            self._idle.reset(self._idle_timeout)
        else:
            self._idle = self._reactor.callLater(self._idle_timeout, self._on_idle)

    def _disarm_idle(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None

    def _on_idle(self) -> None:
        self._idle = None
        self._stalled = True
        self._s3.stopProducing()


class _Drain(Protocol):
    """Reads and drops a body so the connection can go back to the pool.

    Keeps the first bytes for the log; a body over ``limit`` bytes, or one
    still coming after ``timeout`` seconds, is cut off by closing the connection.
    """

    transport: Connection | None

    def __init__(self, reactor: IReactorTime, timeout: float, limit: int) -> None:
        self.done: Deferred[bytes] = Deferred()
        self._kept = b""
        self._seen = 0
        self._limit = limit
        self._timer = reactor.callLater(timeout, self._cut)

    def connectionMade(self) -> None:
        if self._limit <= 0:
            self._cut()

    def dataReceived(self, data: bytes) -> None:
        if len(self._kept) < SNIPPET:
            self._kept += data[:SNIPPET - len(self._kept)]
        self._seen += len(data)
        if self._seen > self._limit:
            self._cut()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer.active():
            self._timer.cancel()
        if not self.done.called:
            self.done.callback(self._kept)

    def _cut(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


def _hand_over(result: "S3Object | None | Failure", answer: "Deferred[S3Object | None]") -> None:
    """Fire ``answer`` with the outcome, unless the caller has cancelled it meanwhile."""
    if not answer.called:
        answer.callback(result)  # a Failure (only CancelledError gets here) errbacks
    elif isinstance(result, S3Object):
        result.discard()


def _drain(response: IResponse, reactor: IReactorTime, timeout: float,
           limit: int = DRAIN_LIMIT) -> "Deferred[bytes]":
    protocol = _Drain(reactor, timeout, limit)
    response.deliverBody(protocol)
    return protocol.done


def _object_headers(response: IResponse, head: bool) -> tuple[int, bytes]:
    """Size and Last-Modified of a 200 answer; ValueError if unusable.

    twisted's client keeps a GET's Content-Length for itself (as
    ``response.length``) but leaves a HEAD's among the headers.  A GET whose
    length is unknown was chunked, or had a Content-Encoding that treq decoded
    (an object stored gzipped): the bytes relayed would not be the stored ones.
    """
    if head:
        lengths = response.headers.getRawHeaders(b"content-length") or []
        if len(lengths) != 1 or not lengths[0].isdigit():
            raise ValueError(f"S3 answered HEAD without a usable Content-Length ({lengths!r})")
        size = int(lengths[0])
    elif isinstance(response.length, int):
        size = response.length
    else:
        raise ValueError("S3 answered GET without a Content-Length (chunked or content-encoded)")
    modified = response.headers.getRawHeaders(b"last-modified") or []
    if not modified:
        raise ValueError("S3 answered 200 without Last-Modified")
    return size, modified[0]


def _describe(failure: Failure, timeout: float) -> str:
    """One short human line for a failed request."""
    error = failure.value
    if isinstance(error, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)):
        inner = [r for r in error.reasons if isinstance(r, Failure)]
        if inner:
            return _describe(inner[0], timeout)
    if isinstance(error, CancelledError):
        return f"no answer within {timeout:g}s"
    return f"{type(error).__name__}: {error}"


def _timed_out(failure: Failure) -> bool:
    """A request that got no answer in time (not one refused or broken off)."""
    error = failure.value
    if isinstance(error, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)):
        return any(_timed_out(r) for r in error.reasons if isinstance(r, Failure))
    return isinstance(error, (CancelledError, ConnectTimeout))


def _error_code(body: bytes) -> str:
    """The ``<Code>`` of an S3 XML error body, if there is one."""
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0:
        return ""
    return body[start + 6:end].decode("utf-8", "replace")[:100]
