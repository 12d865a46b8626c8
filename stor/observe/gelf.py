"""GELF 1.1: one log event as Graylog takes it, over UDP (chunked) or TCP.

What a message holds follows Log::Dispatch::Gelf (the old service's output):
``version`` 1.1, ``host`` (this machine's name unless configured),
``short_message`` (the text up to its first line break), ``full_message``
(the whole text, with the traceback of a failure), ``level`` (syslog numbers:
7 debug … 0 emergency), ``timestamp``, and each configured additional field
as ``_<name>``.  stor also sends the event's own fields (``_namespace``,
``_pid``, the access event's ``_status``, ``_path`` …); a configured field
wins over an event field of the same name.

Over UDP the JSON is sent plain (Log::Dispatch::Gelf's default), gzipped
(its ``compress``) or zlib-compressed (stor's ``{"gelf": …}`` form), in one
datagram or in GELF chunks (magic ``1e 0f``, 8-byte message id, sequence
number, count; at most :data:`MAX_CHUNKS`).  A message too big for one
datagram is chunked even when no chunk size is configured (the Perl module
lost it), and one too big even for 128 chunks loses its full text.  Over TCP
each message is the uncompressed JSON followed by a NUL byte (GELF TCP framing).
"""

import gzip
import json
import os
import zlib
from typing import Any

from stor.config.log import GELF_LAN_CHUNK, GelfOutput

MAX_CHUNKS = 128
CHUNK_MAGIC = b"\x1e\x0f"
CHUNK_HEADER = 12
MAX_DATAGRAM = 65507
"""The largest UDP payload over IPv4."""
SHORT_LIMIT = 1000
"""stor's own form cuts ``short_message`` here (the whole text is in ``full_message``)."""

_RECORD_ONLY = frozenset({"time", "level", "message", "traceback"})


def syslog_level(level: int) -> int:
    """A Log::Dispatch level number (0 debug … 7 emergency) → GELF's syslog number."""
    return 7 - level


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


def gelf_message(record: dict[str, Any], timestamp: float, level: int, source: str,
                 output: GelfOutput) -> dict[str, Any]:
    """The GELF object for one event, given its flat record (:func:`stor.observe.logs.event_as_record`)."""
    message = str(record.get("message", "")) or str(record.get("error", "")) or "(no message)"
    traceback = record.get("traceback")
    text = f"{message}\n{traceback.rstrip()}" if traceback else message
    short = message.partition("\n")[0]
    msg: dict[str, Any] = {
        "version": "1.1",
        "host": output.source or source,
        "short_message": short if output.full_message else short[:SHORT_LIMIT],
        "timestamp": round(timestamp, 6),
        "level": syslog_level(level),
    }
    if output.full_message or text != msg["short_message"]:
        msg["full_message"] = text
    fields = {k: v for k, v in record.items() if k not in _RECORD_ONLY}
    fields.update(output.additional_fields)
    for key, value in fields.items():
        name = _field_name(key)
        if name is not None:
            msg[name] = _field_value(value)
    return msg


def encode(message: dict[str, Any], compress: str = "none") -> bytes:
    """The JSON of ``message``, plain, gzipped or zlib-compressed."""
    data = json.dumps(message, ensure_ascii=False).encode("utf-8")
    if compress == "gzip":
        return gzip.compress(data, mtime=0)
    if compress == "zlib":
        return zlib.compress(data)
    return data


def chunk(payload: bytes, message_id: bytes, size: int) -> list[bytes]:
    """``payload`` as GELF chunks of ``size`` bytes of payload each (one datagram if it fits)."""
    if len(payload) <= size:
        return [payload]
    parts = [payload[i:i + size] for i in range(0, len(payload), size)]
    if len(parts) > MAX_CHUNKS:
        raise ValueError(f"GELF message of {len(payload)} bytes needs more than {MAX_CHUNKS} chunks")
    return [CHUNK_MAGIC + message_id + bytes((i, len(parts))) + p for i, p in enumerate(parts)]


def datagrams(message: dict[str, Any], output: GelfOutput) -> list[bytes]:
    """The UDP datagrams for ``message``; a message too big even chunked loses its full text."""
    size = output.chunk_size or MAX_DATAGRAM
    try:
        return _datagrams(message, output, size)
    except ValueError:
        trimmed = dict(message, full_message="(truncated: too large for GELF over UDP)")
        return _datagrams(trimmed, output, size)


def _datagrams(message: dict[str, Any], output: GelfOutput, size: int) -> list[bytes]:
    payload = encode(message, output.compress)
    if not output.chunk_size and len(payload) > MAX_DATAGRAM:
        size = GELF_LAN_CHUNK  # unchunked it could not be sent at all
    return chunk(payload, os.urandom(8), size)


def tcp_frame(message: dict[str, Any]) -> bytes:
    """GELF over TCP: the uncompressed JSON and a NUL byte."""
    return encode(message) + b"\0"
