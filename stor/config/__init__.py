"""The configuration file: the old service's JSON keys with their old meanings, and stor's own.

:func:`load_config` reads a file into a frozen :class:`Config`, or raises one
:class:`~stor.core.errors.ConfigError` carrying *every* error of the file
(each a :class:`Problem` naming its key), so one run of ``stor check-config``
or of start-up shows all of them, before anything listens.
:func:`check_config` returns the errors and the warnings without raising.
Everything else in stor reads the typed object, never the raw JSON.

Each group of keys has its module, which records what is wrong in a
:class:`~stor.config.problems.Problems` and returns a typed section:
:mod:`~stor.config.storage`, :mod:`~stor.config.server`, :mod:`~stor.config.auth`,
:mod:`~stor.config.s3`, :mod:`~stor.config.memcached`, :mod:`~stor.config.statsite`,
:mod:`~stor.config.amqp`, :mod:`~stor.config.log`.  This module only assembles
them.  ``schema.json`` beside it describes every key (a test keeps the two equal).
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

from stor.config import amqp, auth, log, memcached, s3, server, statsite, storage
from stor.config.amqp import AmqpConfig, parse_amqp
from stor.config.auth import AuthConfig, parse_auth
from stor.config.jsonfile import read_json
from stor.config.log import LogConfig, parse_log_settings
from stor.config.memcached import MemcachedConfig, parse_memcached
from stor.config.problems import Problem, Problems
from stor.config.s3 import S3Config, parse_s3
from stor.config.server import DEFAULT_LISTEN, ServerConfig, parse_server_config
from stor.config.statsite import StatsiteConfig, parse_statsite
from stor.config.storage import DEFAULT_CLEANUP_PERIOD, StorageConfig, parse_storage
from stor.core.errors import ConfigError
from stor.core.placement import BALANCE_THRESHOLD, Pair

__all__ = ["Checked", "Config", "ConfigError", "KNOWN_KEYS", "LogConfig", "Problem", "S3Config",
           "StatsiteConfig", "check_config", "load_config", "parse_config", "schema"]

DEFAULT_SHUTDOWN_GRACE = server.DEFAULT_SHUTDOWN_GRACE

KNOWN_KEYS = (storage.KEYS | server.KEYS | auth.KEYS | s3.KEYS | memcached.KEYS | statsite.KEYS
              | amqp.KEYS | log.KEYS)
"""Every top-level key stor reads; ``schema.json`` lists the same ones."""


@dataclass(frozen=True)
class Config:
    """Validated configuration; see docs/configuration.rst for every key."""

    storage_pairs: tuple[Pair, ...]
    writable_pairs_regex: re.Pattern[str] = storage.ANY
    basic_auth: str | None = None
    delete_auth: str | None = None
    """``user:password`` for DELETE; None: DELETE is not allowed (405)."""
    listen: str = DEFAULT_LISTEN
    check_mounts: bool | None = None
    max_upload_size: int | None = None
    cleanup_tempdir_period: float = DEFAULT_CLEANUP_PERIOD
    balance_threshold: int = BALANCE_THRESHOLD
    s3: S3Config | None = None
    memcached: MemcachedConfig = MemcachedConfig()
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE
    statsite: StatsiteConfig | None = None
    """A file always gives one (the old client's defaults when absent); None, built in code: off."""
    amqp: AmqpConfig | None = None
    log: LogConfig = LogConfig()
    lock_dir: str | None = None
    probe_period: float = storage.DEFAULT_PROBE_PERIOD
    header_timeout: float = server.DEFAULT_HEADER_TIMEOUT
    body_timeout: float = server.DEFAULT_BODY_TIMEOUT
    sendfile: bool = True
    server_header: str = server.DEFAULT_SERVER_HEADER
    write_headroom: int = storage.DEFAULT_WRITE_HEADROOM
    """Bytes both members of a writable pair must have free for ``/health/write``."""
    read_hedge_after: float = storage.DEFAULT_READ_HEDGE_AFTER
    """Seconds a replica's read may stall before its twin is asked too."""
    trusted_proxies: tuple[Any, ...] = ()
    """Networks of the balancers whose ``X-Forwarded-For`` is believed."""
    fleet_peers: tuple[str, ...] = ()
    """The other hosts' base URLs, asked on a miss before a 404."""
    unknown_keys: tuple[str, ...] = field(default=())
    """Top-level keys stor does not read (each is also one of ``warnings``)."""
    warnings: tuple[Problem, ...] = ()
    """What the file says that stor accepts but an operator should look at."""

    @property
    def storages(self) -> tuple[str, ...]:
        """Every storage directory, in configuration order."""
        return tuple(s for pair in self.storage_pairs for s in pair)


@dataclass(frozen=True)
class Checked:
    """Everything one reading of a config file found: the config (None if there are errors)."""

    config: Config | None
    errors: tuple[Problem, ...]
    warnings: tuple[Problem, ...]


def check_config(path: str) -> Checked:
    """Read and validate the file at ``path``; never raises for what the file says."""
    problems = Problems()
    raw = read_json(path, problems)
    config = _assemble(raw, problems) if raw is not None or not problems.errors else None
    return Checked(config if not problems.errors else None, tuple(problems.errors),
                   tuple(problems.warnings))


def load_config(path: str) -> Config:
    """The validated config in ``path``; ConfigError carrying every error if it has any."""
    checked = check_config(path)
    if checked.config is None:
        raise ConfigError.of(checked.errors)
    return checked.config


def parse_config(raw: object) -> Config:
    """Validate an already-decoded JSON document (tests, tools); ConfigError with every error."""
    problems = Problems()
    config = _assemble(raw, problems)
    if problems.errors or config is None:
        raise ConfigError.of(problems.errors)
    return config


def schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``stor/config/schema.json``, shipped with the package)."""
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def _assemble(raw: object, problems: Problems) -> Config | None:
    if not isinstance(raw, dict):
        problems.error("", f"the config must be a JSON object {{\"storage_pairs\": …}}, "
                           f"got {type(raw).__name__ if raw is not None else 'null'}")
        return None
    unknown = problems.unknown_keys("", raw, KNOWN_KEYS, strict=False, what="a stor key")
    flat = _flat(parse_storage(raw, problems), parse_server_config(raw, problems),
                 parse_auth(raw, problems))
    sections: dict[str, Any] = dict(
        s3=parse_s3(raw, problems),
        memcached=parse_memcached(raw, problems),
        statsite=parse_statsite(raw.get("statsite"), problems),
        amqp=parse_amqp(raw.get("rabbitmq_uri"), problems),
        log=parse_log_settings(raw, problems),
    )
    return Config(**flat, **sections, unknown_keys=tuple(unknown),
                  warnings=tuple(problems.warnings))


def _flat(*sections: StorageConfig | ServerConfig | AuthConfig) -> Mapping[str, Any]:
    """The fields of flat sections, as keyword arguments of :class:`Config`."""
    return {f.name: getattr(s, f.name) for s in sections for f in fields(s)}
