"""The other hosts of a fleet, asked when a file is neither here nor in the bucket.

Behind a balancer, a file is uploaded to the host its SHA hashes to, or, while
that host is out of the upload pool (full, hung, restarting), to another one.
Until that host's outbox has put the file in the bucket, the SHA's usual host
cannot find it: neither on its disks nor in S3.  So a host configured with
``fleet_peers`` asks them before it answers "not found": ``GET /<sha>`` with
``Stor-Peer: local`` (a peer asked so looks on its own disks only, never in S3
or at its peers: no loops, no fan-out), each in turn, and relays the first
whole answer, verified against the SHA as an S3 body is (:mod:`stor.s3.read`).

A peer that cannot say (down, hung, 5xx) is passed over: it does not turn a
404 into a 503 (a file only on a dead host is out of reach either way, and
reaches the bucket when the host is back).  A peer that timed out is not asked
again until it answers a probe, as for S3.
"""

from twisted.web.http_headers import Headers

from stor.config import Config, S3Config
from stor.core.metrics import Metrics
from stor.core.peer import PEER_HEADER, PEER_LOCAL
from stor.core.reactor import Reactor
from stor.s3.read import S3Reader, s3_client


CONNECT_TIMEOUT = 1.0  # seconds: peers are on the same network
ANSWER_TIMEOUT = 5.0  # seconds to the first byte: a peer reads only its own disks


class PeerReader(S3Reader):
    """One other stor host, read like a bucket (verified relay, outage breaker)."""

    not_found_key = "error.get.not_found_peer.count"
    error_key = "error.get.peer_error.count"
    bad_sha_key = "error.get.peer_bad_sha.count"

    def __init__(self, base_url: str, reactor: Reactor, metrics: Metrics) -> None:
        config = S3Config(access_key="-", secret_key="-", endpoint=base_url.rstrip("/"),
                          connect_timeout=CONNECT_TIMEOUT, timeout=ANSWER_TIMEOUT)
        self.what = f"peer {config.endpoint}"
        super().__init__(config, s3_client(config, reactor), reactor, metrics)

    def url(self, sha: str) -> str:
        return f"{self._config.endpoint}/{sha}"

    def signed_headers(self, method: str, url: str) -> Headers:
        return Headers({PEER_HEADER: [PEER_LOCAL]})


def build_peers(config: Config, reactor: Reactor, metrics: Metrics) -> list[PeerReader]:
    """A reader for each of ``fleet_peers``."""
    return [PeerReader(url, reactor, metrics) for url in config.fleet_peers]
