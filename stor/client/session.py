"""The HTTP side of the client: one connection pool, the storage URL, credentials, timeouts.

Requests go through treq over a plain ``Agent`` with a persistent pool of
``-j N`` connections.  Every network-level failure comes out as an
:class:`~stor.client.errors.ItemFailed` (see ``errors.connection_failure``),
so the commands deal with one kind of error.
"""


from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IResponse

from stor.client.errors import connection_failure
from stor.client.settings import Settings
from stor.core.reactor import Reactor


class Session:
    """Requests to one stor server, ``settings.parallel`` connections at most."""

    def __init__(self, reactor: Reactor, settings: Settings) -> None:
        self.reactor = reactor
        self.settings = settings
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = settings.parallel
        agent = Agent(reactor, connectTimeout=settings.timeout, pool=self._pool)
        self._http = HTTPClient(agent)

    async def head(self, sha: str) -> IResponse:
        return await self._request("HEAD", sha, timeout=self.settings.timeout)

    async def delete(self, sha: str) -> IResponse:
        """``DELETE /<sha>`` with the settings' credentials (the host's ``delete_auth``)."""
        d = self._http.request("DELETE", self.settings.url(sha), auth=self.settings.auth,
                               unbuffered=True, timeout=self.settings.timeout,
                               reactor=self.reactor)
        return await d.addErrback(self._failed)

    async def status(self) -> IResponse:
        """``GET /status`` as JSON: the host's storages, version, uptime, S3 backlog."""
        headers: dict[bytes | str, bytes | str] = {"Accept": "application/json"}
        d = self._http.request("GET", self.settings.storage + "/status",
                               headers=headers, unbuffered=True,
                               timeout=self.settings.timeout, reactor=self.reactor)
        return await d.addErrback(self._failed)

    async def get(self, sha: str, offset: int = 0) -> IResponse:
        """GET the file, from byte ``offset`` on (a ``Range`` request) when it is not 0."""
        headers: dict[bytes | str, bytes | str] = {"Range": f"bytes={offset}-"} if offset else {}
        return await self._request("GET", sha, headers=headers, timeout=self.settings.timeout)

    def post(self, sha: str, body: IBodyProducer) -> "Deferred[IResponse]":
        """POST the body; the caller cancels the Deferred when the upload stalls.

        No overall timeout: a large file takes as long as it takes while bytes move.
        """
        headers: dict[bytes | str, bytes | str] = {"Content-Type": "application/octet-stream"}
        d = self._http.post(self.settings.url(sha), data=body, auth=self.settings.auth,
                            headers=headers,
                            allow_redirects=False, unbuffered=True, reactor=self.reactor)
        # treq's _Response provides IResponse, but Deferred is invariant
        return d.addErrback(self._failed)  # type: ignore[return-value]  # (above)

    async def _request(self, method: str, sha: str,
                       headers: dict[bytes | str, bytes | str] | None = None,
                       timeout: float | None = None) -> IResponse:
        d = self._http.request(method, self.settings.url(sha), headers=headers or {},
                               unbuffered=True, timeout=timeout, reactor=self.reactor)
        return await d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> Failure:
        return Failure(connection_failure(failure, self.settings.timeout))

    async def close(self) -> None:
        """Close idle connections (so the process exits without a dangling socket)."""
        await self._pool.closeCachedConnections()


def retry_after(response: IResponse) -> float | None:
    """A ``Retry-After`` in seconds (the HTTP-date form is ignored)."""
    values = response.headers.getRawHeaders(b"retry-after") or []
    try:
        return float(values[0]) if values else None
    except ValueError:
        return None
