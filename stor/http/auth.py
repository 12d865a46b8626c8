"""HTTP Basic credentials, compared with the configured ``user:password`` in constant time."""

import base64
import binascii
import hmac

from twisted.web.http_headers import Headers


def credentials(headers: Headers) -> bytes | None:
    """The ``user:password`` bytes of a Basic ``Authorization`` header, if any."""
    value = headers.getRawHeaders(b"authorization", [b""])[0]
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic" or not encoded:
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None


def authorized(headers: Headers, expected: str | None) -> bool:
    """Whether ``headers`` carry exactly the configured credentials.

    With nothing configured (``expected`` None or empty) nobody is authorized:
    a storage host that lost its credentials must not turn into an open one.
    """
    given = credentials(headers)
    if not expected or given is None:
        return False
    return hmac.compare_digest(given, expected.encode())


def user_of(headers: Headers) -> str:
    """The user name of a request's Basic credentials (for a log line), or ``-``."""
    given = credentials(headers)
    if given is None:
        return "-"
    return given.split(b":", 1)[0].decode("utf-8", "replace")
