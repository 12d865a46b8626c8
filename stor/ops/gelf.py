"""GELF over UDP: every log event also goes to Graylog when the config says so.

The config's ``log`` key (accepted and ignored by the old service's config
loader) enables it::

    "log": {"gelf": {"host": "graylog.example.net:12201",   (port default 12201)
                     "level": "info",          (debug|info|warn|error|critical)
                     "facility": "stor",       (the _facility field)
                     "fields": {"env": "prod"}}}  (extra fields on every message)

Any other ``log`` value (``null``, a string, an object without ``gelf``) is
accepted and ignored, as before.

Each event becomes a GELF 1.1 JSON object, zlib-compressed, in one datagram;
one over :data:`CHUNK_SIZE` bytes is split into GELF chunks (magic ``1e 0f``,
8-byte message id, sequence number, count; at most 128).  Sending never blocks
and never fails anything: the socket is non-blocking, the host name is resolved
in a thread at start and every five minutes, a datagram that cannot be sent is
counted in :attr:`GelfSender.dropped`.  The observer may be called from any
thread (twisted.logger delivers events where they are emitted).
"""

import json
import os
import socket
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, LogEvent, Logger, globalLogPublisher
from zope.interface import implementer

from stor.core.errors import ConfigError
from stor.ops.logs import event_as_record

DEFAULT_PORT = 12201
CHUNK_SIZE = 8192
"""Largest datagram sent (header included): Graylog's recommended LAN maximum."""
MAX_CHUNKS = 128
CHUNK_MAGIC = b"\x1e\x0f"
CHUNK_HEADER = 12
PENDING_LIMIT = 1000
"""Datagrams kept while the host name is not resolved yet (start-up messages)."""

log = Logger()

SYSLOG_LEVELS = {"debug": 7, "info": 6, "warn": 4, "error": 3, "critical": 2}


@dataclass(frozen=True)
class GelfConfig:
    """Where GELF messages go and which ones."""

    host: str
    port: int = DEFAULT_PORT
    level: str = "info"
    facility: str = "stor"
    fields: dict[str, Any] = field(default_factory=dict)


def parse_gelf(value: object) -> GelfConfig | None:
    """The config's ``log`` value → a :class:`GelfConfig`, or None when GELF is off."""
    if not isinstance(value, dict) or value.get("gelf") is None:
        return None
    key = "log.gelf"
    gelf = value["gelf"]
    if not isinstance(gelf, dict):
        raise ConfigError(key, 'must be an object {"host": "host[:port]", …}')
    host_text = gelf.get("host")
    if not isinstance(host_text, str) or not host_text:
        raise ConfigError(f"{key}.host", 'must be a string "host" or "host:port"')
    from stor.config import _host_port  # the same host[:port] rules as statsite's

    host, port = _host_port(host_text, DEFAULT_PORT, f"{key}.host")
    level = gelf.get("level", "info")
    if level not in SYSLOG_LEVELS:
        raise ConfigError(f"{key}.level", f"must be one of {', '.join(SYSLOG_LEVELS)}, got {json.dumps(level)}")
    facility = gelf.get("facility", "stor")
    if not isinstance(facility, str) or not facility:
        raise ConfigError(f"{key}.facility", "must be a non-empty string")
    fields = gelf.get("fields", {})
    if not isinstance(fields, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in fields.values()):
        raise ConfigError(f"{key}.fields", "must be an object of string or number values")
    unknown = set(gelf) - {"host", "level", "facility", "fields"}
    if unknown:
        raise ConfigError(f"{key}.{sorted(unknown)[0]}", "is not a known GELF setting")
    return GelfConfig(host, port, level, facility, dict(fields))


def _field_name(key: str) -> str | None:
    name = "".join(c if c.isalnum() or c in "_.-" else "_" for c in key)
    return None if not name or name == "id" else "_" + name


def _field_value(value: Any) -> str | int | float:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return value
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def gelf_message(event: LogEvent, source: str, facility: str,
                 fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """The GELF 1.1 object for one log event."""
    record = event_as_record(event)
    message = str(record.pop("message", "")) or "(no message)"
    short, _, rest = message.partition("\n")
    traceback = record.pop("traceback", None)
    msg: dict[str, Any] = {
        "version": "1.1",
        "host": source,
        "short_message": short[:1000],
        "timestamp": round(float(event.get("log_time", 0.0)), 6),
        "level": SYSLOG_LEVELS.get(record.pop("level", "info"), 6),
        "_facility": facility,
    }
    full = "\n".join(p for p in (message if rest or len(short) > 1000 else "", traceback) if p)
    if full:
        msg["full_message"] = full
    record.pop("time", None)
    for key, value in {**record, **(fields or {})}.items():
        name = _field_name(key)
        if name is not None and name not in msg:
            msg[name] = _field_value(value)
    return msg


def encode(message: dict[str, Any]) -> bytes:
    """JSON, zlib-compressed: what one (unchunked) GELF datagram carries."""
    return zlib.compress(json.dumps(message, ensure_ascii=False).encode("utf-8"))


def chunk(payload: bytes, message_id: bytes, size: int = CHUNK_SIZE) -> list[bytes]:
    """``payload`` as datagrams of at most ``size`` bytes (GELF chunking when needed)."""
    if len(payload) <= size:
        return [payload]
    room = size - CHUNK_HEADER
    parts = [payload[i:i + room] for i in range(0, len(payload), room)]
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"GELF message of {len(payload)} bytes needs more than {MAX_CHUNKS} chunks")
    return [CHUNK_MAGIC + message_id + bytes((i, len(parts))) + p for i, p in enumerate(parts)]


def datagrams(message: dict[str, Any], size: int = CHUNK_SIZE) -> list[bytes]:
    """The datagrams for ``message``; a message too big even chunked loses its full text."""
    payload = encode(message)
    try:
        return chunk(payload, os.urandom(8), size)
    except ValueError:
        trimmed = dict(message, full_message="(truncated: too large for GELF over UDP)")
        return chunk(encode(trimmed), os.urandom(8), size)


@implementer(ILogObserver)
class GelfSender:
    """A log observer sending events at or above a level as GELF datagrams."""

    def __init__(self, config: GelfConfig, source: str | None = None) -> None:
        self.config = config
        self.source = source or socket.gethostname()
        self._threshold = SYSLOG_LEVELS[config.level]
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._address: Any = None
        self._pending: list[bytes] = []
        self.sent = 0
        self.dropped = 0

    def __call__(self, event: LogEvent) -> None:
        level = getattr(event.get("log_level"), "name", "info")
        if SYSLOG_LEVELS.get(level, 6) > self._threshold:
            return
        try:
            packets = datagrams(gelf_message(event, self.source, self.config.facility,
                                             self.config.fields))
        except Exception:  # never log from a log observer: that would loop
            self.dropped += 1
            return
        with self._lock:
            if self._socket is None:
                if len(self._pending) + len(packets) <= PENDING_LIMIT:
                    self._pending.extend(packets)
                else:
                    self.dropped += 1
                return
            self._send(packets)

    def resolved(self, family: int, address: Any) -> None:
        """Send to ``address`` from now on (resolved off the reactor); flush what waited."""
        with self._lock:
            if self._socket is None or self._socket.family != family:
                if self._socket is not None:
                    self._socket.close()
                self._socket = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._socket.setblocking(False)
            self._address = address
            pending, self._pending = self._pending, []
            self._send(pending)

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            self._pending = []

    def _send(self, packets: list[bytes]) -> None:
        assert self._socket is not None
        for packet in packets:
            try:
                self._socket.sendto(packet, self._address)
                self.sent += 1
            except OSError:
                self.dropped += 1


class GelfService(Service):
    """Adds a :class:`GelfSender` to the global log publisher while running."""

    def __init__(self, sender: GelfSender, reactor: Any, refresh: float = 300.0) -> None:
        self.sender = sender
        self._reactor = reactor
        self._refresh = refresh
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(self.sender)
        self._loop = LoopingCall(self._resolve)
        self._loop.clock = self._reactor
        self._loop.start(self._refresh, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        globalLogPublisher.removeObserver(self.sender)
        self.sender.close()

    def _resolve(self) -> Any:
        cfg = self.sender.config
        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(), socket.getaddrinfo,
                              cfg.host, cfg.port, type=socket.SOCK_DGRAM)
        d.addCallbacks(self._resolved, self._unresolved)
        return d

    def _resolved(self, infos: list[Any]) -> None:
        family, _, _, _, address = infos[0]
        self.sender.resolved(family, address)

    def _unresolved(self, failure: Any) -> None:
        log.warn("GELF host {host} does not resolve: {error}",
                      host=self.sender.config.host, error=failure.getErrorMessage())


def build_gelf(log_value: object, reactor: Any) -> GelfService | None:
    """The GELF service for the config's ``log`` value, or None (raises ConfigError)."""
    config = parse_gelf(log_value)
    if config is None:
        return None
    return GelfService(GelfSender(config), reactor)
