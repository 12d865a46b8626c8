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

    With no ``basic_auth`` configured nobody may upload: a storage host that
    lost its credentials must not turn into an open one.
    """
    given = credentials(headers)
    if expected is None or given is None:
        return False
    return hmac.compare_digest(given, expected.encode())
