"""The configuration file: the old service's JSON keys, validated once.

:func:`load_config` turns a file into a frozen :class:`Config` or raises
:class:`~stor.errors.ConfigError` naming the offending key, so start-up can
stop with one clear line before anything listens.  Everything else in stor
reads the typed object, never the raw JSON.
"""

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stor.config.amqp import AmqpConfig, parse_amqp
from stor.config.log import LogConfig, parse_log
from stor.config.memcached import MemcachedConfig, parse_memcached
from stor.config.problems import Problem, Problems
from stor.config.statsite import StatsiteConfig, parse_statsite
from stor.core.errors import ConfigError
from stor.core.placement import BALANCE_THRESHOLD, Pair

__all__ = ["Config", "ConfigError", "LogConfig", "S3Config", "StatsiteConfig",
           "load_config", "parse_config"]

DEFAULT_LISTEN = "tcp:8080"
DEFAULT_CLEANUP_PERIOD = 1800.0
DEFAULT_SHUTDOWN_GRACE = 30.0

KNOWN_KEYS = frozenset(
    {
        # the old service's keys
        "storage_pairs", "writable_pairs_regex", "s3_enabled", "s3_credentials",
        "memcached_servers", "statsite", "basic_auth", "rabbitmq_uri", "secret",
        "log", "cleanup_tempdir_period",
        # new keys
        "listen", "check_mounts", "max_upload_size", "s3_bucket",
        "s3_connect_timeout", "s3_timeout", "balance_threshold",
        "memcached_timeout", "memcached_prefix", "shutdown_grace_period", "lock_dir",
        "header_timeout", "body_timeout",
        "s3_write_through", "s3_region", "s3_outbox_concurrency", "s3_outbox_max_backoff",
    }
)


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


@dataclass(frozen=True)
class Config:
    """Validated configuration; see README.rst for every key."""

    storage_pairs: tuple[Pair, ...]
    writable_pairs_regex: re.Pattern[str] = re.compile(".*")
    basic_auth: str | None = None
    listen: str = DEFAULT_LISTEN
    check_mounts: bool | None = None
    max_upload_size: int | None = None
    cleanup_tempdir_period: float = DEFAULT_CLEANUP_PERIOD
    balance_threshold: int = BALANCE_THRESHOLD
    s3: S3Config | None = None
    memcached: MemcachedConfig = MemcachedConfig()
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE
    statsite: StatsiteConfig | None = None
    amqp: AmqpConfig | None = None
    log: LogConfig = LogConfig()
    lock_dir: str | None = None
    header_timeout: float = 30.0
    body_timeout: float = 120.0
    unknown_keys: tuple[str, ...] = field(default=())
    warnings: tuple[Problem, ...] = ()
    """What the file says that stor accepts but an operator should look at."""

    @property
    def storages(self) -> tuple[str, ...]:
        """Every storage directory, in configuration order."""
        return tuple(s for pair in self.storage_pairs for s in pair)


def load_config(path: str) -> Config:
    """Read and validate the JSON file at ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("", f"{path} is not valid JSON: {e}") from e
    return parse_config(raw)


def parse_config(raw: object) -> Config:
    """Validate an already-decoded JSON document."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the config must be a JSON object")
    problems = Problems()
    statsite = parse_statsite(raw.get("statsite"), problems)
    log = parse_log(raw.get("log"), problems)
    if problems.errors:
        first = problems.errors[0]
        raise ConfigError(first.key, first.message)
    return Config(
        storage_pairs=_storage_pairs(raw.get("storage_pairs")),
        writable_pairs_regex=_regex(raw.get("writable_pairs_regex", ".*")),
        basic_auth=_basic_auth(raw.get("basic_auth")),
        listen=_listen(raw),
        check_mounts=None if raw.get("check_mounts") is None else _bool(raw, "check_mounts", True),
        max_upload_size=_optional_positive_int(raw, "max_upload_size"),
        cleanup_tempdir_period=_positive_number(
            raw, "cleanup_tempdir_period", DEFAULT_CLEANUP_PERIOD
        ),
        balance_threshold=_non_negative_int(raw, "balance_threshold", BALANCE_THRESHOLD),
        s3=_s3(raw),
        memcached=_memcached(raw),
        shutdown_grace_period=_grace_period(raw),
        statsite=statsite,
        amqp=_rabbitmq_uri(raw.get("rabbitmq_uri")),
        log=log,
        lock_dir=_optional_string(raw, "lock_dir"),
        header_timeout=_positive_number(raw, "header_timeout", 30.0),
        body_timeout=_positive_number(raw, "body_timeout", 120.0),
        unknown_keys=tuple(sorted(set(raw) - KNOWN_KEYS)),
        warnings=tuple(problems.warnings),
    )


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _storage_pairs(value: object) -> tuple[Pair, ...]:
    key = "storage_pairs"
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of [dir, dir] pairs"
                          + ("" if value is not None else " (missing)"))
    pairs: list[Pair] = []
    seen: set[str] = set()
    for i, pair in enumerate(value):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(p, str) and p for p in pair)):
            raise ConfigError(f"{key}[{i}]", f"must be a list of two directory paths, got {json.dumps(pair)}")
        for j, storage in enumerate(pair):
            real = os.path.realpath(storage)
            if os.path.exists(storage) and not os.path.isdir(storage):
                raise ConfigError(f"{key}[{i}][{j}]", f"{storage} exists and is not a directory")
            if real in seen:
                raise ConfigError(f"{key}[{i}][{j}]", f"{storage} is listed more than once")
            seen.add(real)
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _regex(value: object) -> re.Pattern[str]:
    key = "writable_pairs_regex"
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {_type_name(value)}")
    try:
        return re.compile(value)
    except re.error as e:
        raise ConfigError(key, f"is not a valid regular expression: {e}") from e


def _basic_auth(value: object) -> str | None:
    key = "basic_auth"
    if value is None or value == "":
        return None
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(key, 'must be a string "user:password"')
    return value


def _string(raw: dict[str, Any], key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {_type_name(value)}")
    return value


def _listen(raw: dict[str, Any]) -> str:
    """A Twisted server endpoint string (parsed when the daemon starts)."""
    return _string(raw, "listen", DEFAULT_LISTEN)


def _optional_string(raw: dict[str, Any], key: str) -> str | None:
    if raw.get(key) is None:
        return None
    return _string(raw, key, "")


def _bool(raw: dict[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {json.dumps(value)}")
    return value


def _number(raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {json.dumps(value)}")
    return float(value)


def _positive_number(raw: dict[str, Any], key: str, default: float) -> float:
    value = _number(raw, key, default)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"must be greater than 0, got {raw.get(key)}")
    return value


def _grace_period(raw: dict[str, Any]) -> float:
    """Seconds requests in flight get to finish on SIGTERM; 0 cuts them at once."""
    value = _number(raw, "shutdown_grace_period", DEFAULT_SHUTDOWN_GRACE)
    if not math.isfinite(value) or value < 0:
        raise ConfigError("shutdown_grace_period", f"must be a number of seconds >= 0, got {raw.get('shutdown_grace_period')}")
    return value


def _non_negative_int(raw: dict[str, Any], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, f"must be a whole number of bytes >= 0, got {json.dumps(value)}")
    return value


def _optional_positive_int(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a whole number of bytes > 0, got {json.dumps(value)}")
    return value


def _host_port(text: str, default_port: int, key: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":") or (host.startswith("[") is not host.endswith("]")):
        host, port = text, ""
    host = host.strip("[]")
    if not host:
        raise ConfigError(key, f"{text!r} has no host name")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"{text!r} has an invalid port")
    return host, int(port)


def _memcached(raw: dict[str, Any]) -> MemcachedConfig:
    problems = Problems()
    memcached = parse_memcached(raw, problems)
    if problems.errors:
        first = problems.errors[0]
        raise ConfigError(first.key, first.message)
    return memcached


def _s3(raw: dict[str, Any]) -> S3Config | None:
    read = _bool(raw, "s3_enabled", False)
    write = _bool(raw, "s3_write_through", False)
    if not (read or write):
        return None
    needed_by = "s3_enabled" if read else "s3_write_through"
    creds = raw.get("s3_credentials")
    if not isinstance(creds, dict):
        raise ConfigError("s3_credentials", f"must be an object {{access_key, secret_key, host}} when {needed_by} is true")
    for part in ("access_key", "secret_key", "host"):
        if not isinstance(creds.get(part), str) or not creds[part]:
            raise ConfigError(f"s3_credentials.{part}", f"must be a non-empty string when {needed_by} is true")
    host = creds["host"]
    endpoint = host if "://" in host else f"http://{host}"
    parts = urlsplit(endpoint)
    try:
        _ = parts.port  # urlsplit checks the port only when asked for it
    except ValueError as e:
        raise ConfigError("s3_credentials.host", f"{host!r} has an invalid port") from e
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or any(c.isspace() for c in parts.netloc)):
        raise ConfigError("s3_credentials.host", f"{host!r} is neither a host name nor an http(s) URL")
    return S3Config(
        access_key=creds["access_key"],
        secret_key=creds["secret_key"],
        endpoint=endpoint.rstrip("/"),
        bucket=_string(raw, "s3_bucket", "samples"),
        connect_timeout=_positive_number(raw, "s3_connect_timeout", 2.0),
        timeout=_positive_number(raw, "s3_timeout", 10.0),
        region=_region(raw),
        read_through=read,
        write_through=write,
        outbox_concurrency=_outbox_concurrency(raw),
        outbox_max_backoff=_positive_number(raw, "s3_outbox_max_backoff", 30.0),
    )


def _region(raw: dict[str, Any]) -> str:
    """An AWS region name (``eu-central-1``); signatures name it, so a wrong one is refused."""
    value = _string(raw, "s3_region", "us-east-1")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", value):
        raise ConfigError("s3_region", f"{value!r} is not a region name like \"eu-central-1\"")
    return value


def _outbox_concurrency(raw: dict[str, Any]) -> int:
    value = raw.get("s3_outbox_concurrency", 4)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ConfigError("s3_outbox_concurrency",
                          f"must be a whole number from 1 to 256, got {json.dumps(value)}")
    return value


def _rabbitmq_uri(value: object) -> "AmqpConfig | None":
    problems = Problems()
    amqp = parse_amqp(value, problems)
    if problems.errors:
        raise ConfigError.of(problems.errors)
    return amqp
