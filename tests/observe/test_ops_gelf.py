"""GELF messages (:mod:`stor.observe.gelf`), and stor's own ``{"gelf": …}`` form end to end.

The old service's Log::Dispatch ``Gelf`` output is tested in test_log_outputs.py.
"""

import json
import secrets
import socket
import string
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from support.logs import GelfAssembler, gelf_json
from support.harness import request
from stor.config.log import GELF_LAN_CHUNK, GelfOutput, STOR_GELF_CHUNK
from stor.observe.gelf import CHUNK_HEADER, MAX_DATAGRAM, chunk, datagrams

CHUNK_SIZE = STOR_GELF_CHUNK + CHUNK_HEADER
"""stor's own form: datagrams of at most 8 KiB."""
OLD = GelfOutput(key="log[0]", host="graylog")
STOR = GelfOutput(key="log.gelf", host="graylog", compress="zlib", chunk_size=STOR_GELF_CHUNK,
                  full_message=False)


class GelfPeer:
    """A UDP socket standing in for Graylog; reassembles chunked messages."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sizes: list[int] = []
        self._assembler = GelfAssembler()

    def messages(self, until: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Decoded messages until ``until(message)`` is true for one of them."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self.sock.recv(65536)
            except TimeoutError:
                break
            self.sizes.append(len(datagram))
            message = self._assembler.take(datagram)
            if message is not None:
                found.append(message)
                if until(message):
                    return found
        pytest.fail(f"no such GELF message among {[m.get('short_message') for m in found]}")

    @property
    def chunked(self) -> int:
        """How many messages arrived in chunks."""
        return self._assembler.chunked

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def graylog() -> Iterator[GelfPeer]:
    peer = GelfPeer()
    yield peer
    peer.close()


def test_a_big_message_is_chunked_and_reassembles() -> None:
    payload = secrets.token_bytes(3 * STOR_GELF_CHUNK + 1)
    parts = chunk(payload, b"12345678", STOR_GELF_CHUNK)
    assert len(parts) == 4 and all(len(p) <= CHUNK_SIZE for p in parts)
    assert [p[:10] for p in parts] == [b"\x1e\x0f12345678"] * 4
    assert [p[10:12] for p in parts] == [bytes((i, 4)) for i in range(4)]
    assert b"".join(p[12:] for p in parts) == payload
    huge = {"version": "1.1", "short_message": "x", "full_message": secrets.token_hex(2_000_000)}
    too_big = datagrams(huge, STOR)  # over 128 chunks: sent without its full text
    assert len(too_big) == 1
    assert "truncated" in json.loads(zlib.decompress(too_big[0]))["full_message"]


def test_payloads_are_plain_gzip_or_zlib_as_configured() -> None:
    message = {"version": "1.1", "short_message": "hello", "_facility": "stor"}
    assert json.loads(datagrams(message, OLD)[0]) == message  # Log::Dispatch::Gelf's default
    gz = datagrams(message, GelfOutput(key="k", host="g", compress="gzip"))[0]
    assert gz[:2] == b"\x1f\x8b" and gelf_json(gz) == message
    assert json.loads(zlib.decompress(datagrams(message, STOR)[0])) == message


def test_unchunked_messages_too_big_for_a_datagram_are_chunked_at_the_lan_size() -> None:
    small = {"version": "1.1", "short_message": "x", "full_message": "y" * 30_000}
    assert len(datagrams(small, OLD)) == 1  # one 30 kB datagram, as the Perl module sent it
    big = {"version": "1.1", "short_message": "x", "full_message": secrets.token_hex(60_000)}
    parts = datagrams(big, OLD)
    assert len(parts) > 1 and all(len(p) <= GELF_LAN_CHUNK + CHUNK_HEADER for p in parts)
    assert len(json.dumps(big)) > MAX_DATAGRAM
    assert json.loads(b"".join(p[12:] for p in parts)) == big


@pytest.mark.acceptance('stor-process')
def test_stor_sends_its_log_events_to_graylog(stor_process, graylog) -> None:
    stor = stor_process(log={"gelf": {"host": f"127.0.0.1:{graylog.port}",
                                      "fields": {"env": "test"}}})
    hello = graylog.messages(lambda m: m["short_message"].startswith("serving on"))[-1]
    assert hello["version"] == "1.1" and hello["level"] == 6
    assert hello["host"] == socket.gethostname()
    assert hello["_facility"] == "stor" and hello["_env"] == "test"
    assert hello["_namespace"] == "stor.process.shutdown" and hello["_pid"] == stor.popen.pid
    assert isinstance(hello["timestamp"], float)

    # an access event too long for one datagram arrives in chunks
    junk = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(7_500))
    agent = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(6_000))
    assert request(stor.port, "GET", "/" + junk, None, {"User-Agent": agent}).status == 404
    access = graylog.messages(lambda m: m.get("_namespace") == "stor.access"
                              and m.get("_path") == "/" + junk)[-1]
    assert access["_status"] == 404 and access["_method"] == "GET"
    assert access["short_message"].startswith(f"GET /{junk[:50]}")
    assert graylog.chunked >= 1 and max(graylog.sizes) <= CHUNK_SIZE
    assert stor.terminate() == 0
