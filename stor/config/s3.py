"""The S3 keys: the old service's read-through (``s3_enabled``, ``s3_credentials``) and stor's own.

``s3_enabled`` is read as Perl read it (docs/SPEC.md §7): ``0``, ``""``,
``"0"``, ``null`` and ``false`` are false; ``1``, ``true`` and every other
string (``"false"`` too, with a warning) are true.  ``s3_credentials``
``{access_key, secret_key, host}`` is read only when S3 is used, as the old
service did (its tests carry credentials with ``s3_enabled: 0``); ``host`` is a
host name (``http://`` is put in front) or a full ``http(s)://`` URL.

stor's keys (strict types): ``s3_bucket`` (default ``samples``),
``s3_connect_timeout``/``s3_timeout`` (seconds), ``s3_region``,
``s3_read`` (``first``: S3 before the local storages, as the old service;
``fallback``: only when no local storage has the file), ``s3_fill_local``
(copy a file served from S3 to a local pair), ``s3_write_through`` and the
outbox's ``s3_outbox_concurrency``/``s3_outbox_max_backoff``.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from stor.config import values
from stor.config.perl import describe, perl_string, perl_true
from stor.config.problems import Problems

KEYS = frozenset({"s3_enabled", "s3_credentials", "s3_bucket", "s3_connect_timeout",
                  "s3_timeout", "s3_region", "s3_read", "s3_fill_local", "s3_write_through",
                  "s3_outbox_concurrency", "s3_outbox_max_backoff"})
CREDENTIALS = ("access_key", "secret_key", "host")
READ_ORDERS = ("first", "fallback")
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class S3Config:
    """Where the bucket is, how long to wait for it, and what stor does with it:
    read through it (``s3_enabled``), write through to it (``s3_write_through``)."""

    access_key: str
    secret_key: str
    endpoint: str
    bucket: str = "samples"
    connect_timeout: float = 2.0
    timeout: float = 10.0
    region: str = "us-east-1"
    read_through: bool = True
    write_through: bool = False
    outbox_concurrency: int = 4
    outbox_max_backoff: float = 30.0
    read: str = "first"
    """``s3_read``: ``first`` (S3, then the local storages) or ``fallback`` (the other way)."""
    fill_local: bool = False
    """``s3_fill_local``: a file served from S3 is also stored on a local pair."""


def parse_s3(raw: Mapping[str, object], problems: Problems) -> S3Config | None:
    """The S3 keys of ``raw``: None when S3 is neither read nor written."""
    read = _enabled(raw.get("s3_enabled"), problems)
    write = values.switch(raw, "s3_write_through", False, problems)
    creds = raw.get("s3_credentials")
    if isinstance(creds, dict):
        problems.unknown_keys("s3_credentials", creds, CREDENTIALS, strict=False,
                              what="an S3 credential")
    template = S3Config(
        access_key="", secret_key="", endpoint="",
        bucket=values.string(raw, "s3_bucket", "samples", problems),
        connect_timeout=values.number(raw, "s3_connect_timeout", 2.0, problems),
        timeout=values.number(raw, "s3_timeout", 10.0, problems),
        region=_region(raw, problems),
        read_through=read,
        write_through=write,
        outbox_concurrency=values.whole(raw, "s3_outbox_concurrency", 4, problems,
                                        low=1, high=256, unit="uploads"),
        outbox_max_backoff=values.number(raw, "s3_outbox_max_backoff", 30.0, problems),
        read=values.choice(raw, "s3_read", READ_ORDERS, problems),
        fill_local=values.switch(raw, "s3_fill_local", False, problems),
    )
    if not read:
        for key in ("s3_read", "s3_fill_local"):
            if raw.get(key) is not None:
                problems.warn(key, "has no effect: S3 is not read (s3_enabled is false)")
    if not (read or write):
        return None
    needed_by = "s3_enabled" if read else "s3_write_through"
    found = _credentials(creds, needed_by, problems)
    if found is None:
        return None
    access_key, secret_key, endpoint = found
    return replace(template, access_key=access_key, secret_key=secret_key, endpoint=endpoint)


def _enabled(value: object, problems: Problems) -> bool:
    key = "s3_enabled"
    if isinstance(value, (list, dict)):
        problems.error(key, f"must be true or false (or 1, 0, \"1\", \"0\", \"\"), got {describe(value)}")
        return False
    enabled = perl_true(value)
    if isinstance(value, str) and value not in ("", "0", "1"):
        problems.warn(key, f"{describe(value)} is true, as the old service read it (every string "
                           'but "" and "0" is): S3 is read')
    return enabled


def _credentials(value: object, needed_by: str,
                 problems: Problems) -> tuple[str, str, str] | None:
    """(access_key, secret_key, endpoint URL) from ``s3_credentials``, or None if unusable."""
    key = "s3_credentials"
    if not isinstance(value, dict):
        problems.error(key, f"must be an object {{access_key, secret_key, host}} when {needed_by} "
                            f"is true, got {describe(value)}")
        return None
    parts = {}
    for part in CREDENTIALS:
        text = perl_string(value.get(part))
        if not text:
            problems.error(f"{key}.{part}", f"must be a non-empty string when {needed_by} is true")
        else:
            parts[part] = text
    endpoint = _endpoint(parts["host"], problems) if "host" in parts else None
    if endpoint is None or len(parts) != len(CREDENTIALS):
        return None
    return parts["access_key"], parts["secret_key"], endpoint


def _endpoint(host: str, problems: Problems) -> str | None:
    key = "s3_credentials.host"
    endpoint = host if "://" in host else f"http://{host}"
    parts = urlsplit(endpoint)
    try:
        _ = parts.port  # urlsplit checks the port only when asked for it
    except ValueError:
        problems.error(key, f"{host!r} has an invalid port")
        return None
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in parts.netloc)):
        problems.error(key, f"{host!r} is neither a host name nor an http(s) URL")
        return None
    return endpoint.rstrip("/")


def _region(raw: Mapping[str, object], problems: Problems) -> str:
    """An AWS region name (``eu-central-1``); signatures name it, so a wrong one is refused."""
    value = values.string(raw, "s3_region", "us-east-1", problems)
    if not _REGION.fullmatch(value):
        problems.error("s3_region", f"{value!r} is not a region name like \"eu-central-1\"")
        return "us-east-1"
    return value
