"""SigV4 signing for S3 requests, shared by the read-through and the write-through.

botocore's :class:`~botocore.auth.S3SigV4Auth` does the signing (no botocore
HTTP stack: it blocks).  It always recomputes ``X-Amz-Content-SHA256`` from
the request body it is given (``payload()``), deleting any value set before;
stor never hands it the body (that is streamed later, from disk), so
:class:`_PresetPayloadAuth` lets the caller name the payload's SHA-256
instead.  For a single PUT that is the file's own name: the store then
rejects any body that does not hash to it (AWS ``XAmzContentSHA256Mismatch``,
Ceph RGW and MinIO likewise).
"""

import hashlib
from typing import Any

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from twisted.web.http_headers import Headers

SERVICE = "s3"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_PRESET = "stor_payload_sha256"


class _PresetPayloadAuth(S3SigV4Auth):
    """botocore's S3 signer, taking the payload hash from the request context."""

    def payload(self, request: Any) -> str:
        preset = request.context.get(_PRESET)
        return str(preset) if preset is not None else str(super().payload(request))


class Signer:
    """Signs requests for one set of credentials in one region."""

    def __init__(self, access_key: str, secret_key: str, region: str) -> None:
        self._auth = _PresetPayloadAuth(Credentials(access_key, secret_key), SERVICE, region)

    def headers(self, method: str, url: str, payload_sha256: str = EMPTY_SHA256,
                extra: dict[str, str] | None = None) -> Headers:
        """The headers to send with ``method url``, signed, including ``extra``.

        ``payload_sha256`` is the hex SHA-256 of the body that will be sent
        (the empty body's by default, as botocore signs body-less requests);
        it is signed as ``X-Amz-Content-SHA256``.  The ``Host`` botocore signs
        is the one twisted's Agent sends (default port omitted).
        """
        request = AWSRequest(method=method, url=url, headers=dict(extra or {}))
        request.context[_PRESET] = payload_sha256
        self._auth.add_auth(request)
        return Headers({name: [value] for name, value in request.headers.items()})
