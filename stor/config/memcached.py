"""The memcached keys of the config file: which servers, how long to wait, which key prefix.

``memcached_servers`` keeps the old service's meaning (Cache::Memcached::Fast's
``servers``): each entry is ``host:port``, ``host`` (port 11211), ``[v6]:port``
or ``[v6]``, or the path of a unix socket (anything starting with ``/``).
``memcached_prefix`` is new: it is put in front of every key, so several stor
hosts can share one memcached without reading each other's local paths.  Its
default, empty, keeps the old keys (the bare SHA-256).
"""

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from stor.config.problems import Problems

KEYS = frozenset({"memcached_servers", "memcached_timeout", "memcached_prefix"})
DEFAULT_PORT = 11211
DEFAULT_TIMEOUT = 0.25

MAX_KEY_BYTES = 250
"""memcached's limit on a key."""

SHA_CHARS = 64
MAX_PREFIX_BYTES = MAX_KEY_BYTES - SHA_CHARS
"""Room left for the prefix in front of a hex SHA-256."""

MAX_UNIX_PATH_BYTES = 107
"""``sun_path`` holds 108 bytes on Linux, the terminating NUL included."""

_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?")


@dataclass(frozen=True)
class TcpServer:
    """A memcached reached over TCP; ``host`` is a name or an address (IPv6 without brackets)."""

    host: str
    port: int = DEFAULT_PORT

    @property
    def name(self) -> str:
        """How logs and stats name it, and what spreads keys over servers: ``host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class UnixServer:
    """A memcached listening on a unix socket (``memcached -s PATH``)."""

    path: str

    @property
    def name(self) -> str:
        return self.path


MemcachedServer = TcpServer | UnixServer


@dataclass(frozen=True)
class MemcachedConfig:
    """The lookup cache's memcached: no servers means the in-process LRU alone."""

    servers: tuple[MemcachedServer, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    prefix: str = ""


def parse_memcached(raw: dict[str, Any], problems: Problems) -> MemcachedConfig:
    """The memcached keys of ``raw``; whatever is wrong is recorded in ``problems``."""
    return MemcachedConfig(
        servers=_servers(raw.get("memcached_servers"), problems),
        timeout=_timeout(raw, problems),
        prefix=_prefix(raw.get("memcached_prefix"), problems),
    )


def parse_server(text: str) -> MemcachedServer:
    """One ``memcached_servers`` entry; ValueError says what is wrong with it."""
    if text.startswith("/"):
        return _unix_server(text)
    if text.startswith("["):
        return _bracketed_server(text)
    if text.count(":") > 1:
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, as in \"[::1]:11211\"")
    host, sep, port = text.partition(":")
    _check_host_name(text, host)
    return TcpServer(host, _port(text, port) if sep else DEFAULT_PORT)


def _servers(value: object, problems: Problems) -> tuple[MemcachedServer, ...]:
    key = "memcached_servers"
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.error(key, f"must be a list of \"host[:port]\" or socket path strings, got {json.dumps(value)}")
        return ()
    servers: list[MemcachedServer] = []
    for i, entry in enumerate(value):
        if not isinstance(entry, str):
            problems.error(f"{key}[{i}]", f"must be a string \"host[:port]\" or a socket path, got {json.dumps(entry)}")
        elif not entry:
            problems.warn(f"{key}[{i}]", "is empty and ignored")
        else:
            try:
                server = parse_server(entry)
            except ValueError as e:
                problems.error(f"{key}[{i}]", str(e))
                continue
            if server in servers:
                problems.warn(f"{key}[{i}]", f"{entry!r} is listed before: ignored")
            else:
                servers.append(server)
    return tuple(servers)


def _unix_server(text: str) -> UnixServer:
    if "\0" in text:
        raise ValueError(f"{text!r}: a socket path cannot hold a NUL character")
    if len(text.encode("utf-8", "surrogateescape")) > MAX_UNIX_PATH_BYTES:
        raise ValueError(f"{text!r}: a unix socket path is at most {MAX_UNIX_PATH_BYTES} bytes")
    return UnixServer(text)


def _bracketed_server(text: str) -> TcpServer:
    inside, bracket, rest = text[1:].partition("]")
    if not bracket:
        raise ValueError(f"{text!r}: no closing \"]\"")
    try:
        address = ipaddress.IPv6Address(inside)
    except ValueError:
        raise ValueError(f"{text!r}: {inside!r} is not an IPv6 address") from None
    if rest and not rest.startswith(":"):
        raise ValueError(f"{text!r}: expected \":port\" after \"]\"")
    return TcpServer(str(address), _port(text, rest[1:]) if rest else DEFAULT_PORT)


def _check_host_name(text: str, host: str) -> None:
    if not host:
        raise ValueError(f"{text!r} has no host name")
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(f"{text!r}: {host!r} is not a host name or an IPv4 address")


def _port(text: str, port: str) -> int:
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has an invalid port (1 to 65535)")
    return int(port)


def _timeout(raw: dict[str, Any], problems: Problems) -> float:
    key = "memcached_timeout"
    value = raw.get(key, DEFAULT_TIMEOUT)
    if value is None:
        return DEFAULT_TIMEOUT
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        problems.error(key, f"must be a number of seconds greater than 0, got {json.dumps(value)}")
        return DEFAULT_TIMEOUT
    return float(value)


def _prefix(value: object, problems: Problems) -> str:
    """A prefix that keeps every key valid: printable, no whitespace, short enough."""
    key = "memcached_prefix"
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.error(key, f"must be a string, got {json.dumps(value)}")
        return ""
    bad = sorted({c for c in value if c.isspace() or not c.isprintable()})
    if bad:
        problems.error(key, f"cannot hold whitespace or control characters (memcached keys"
                            f" cannot), got {', '.join(repr(c) for c in bad)}")
        return ""
    size = len(value.encode())  # no surrogates: they are not printable
    if size > MAX_PREFIX_BYTES:
        problems.error(key, f"is {size} bytes long; at most {MAX_PREFIX_BYTES} fit in front of a"
                            f" SHA-256 in a memcached key of {MAX_KEY_BYTES} bytes")
        return ""
    return value
