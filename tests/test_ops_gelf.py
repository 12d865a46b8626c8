"""GELF over UDP: the config's ``log.gelf`` sends every log event to Graylog."""

import json
import secrets
import socket
import string
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from ops_peer import request
from stor.config import parse_config
from stor.core.errors import ConfigError
from stor.ops.gelf import CHUNK_SIZE, GelfConfig, chunk, datagrams, parse_gelf


class GelfPeer:
    """A UDP socket standing in for Graylog; reassembles chunked messages."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sizes: list[int] = []
        self.chunked = 0
        self._parts: dict[bytes, dict[int, bytes]] = {}

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
            message = self._take(datagram)
            if message is not None:
                found.append(message)
                if until(message):
                    return found
        pytest.fail(f"no such GELF message among {[m.get('short_message') for m in found]}")

    def _take(self, datagram: bytes) -> dict[str, Any] | None:
        if datagram[:2] == b"\x1e\x0f":
            message_id, seq, count = datagram[2:10], datagram[10], datagram[11]
            parts = self._parts.setdefault(message_id, {})
            parts[seq] = datagram[12:]
            if len(parts) < count:
                return None
            del self._parts[message_id]
            self.chunked += 1
            datagram = b"".join(parts[i] for i in range(count))
        return json.loads(zlib.decompress(datagram))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def graylog() -> Iterator[GelfPeer]:
    peer = GelfPeer()
    yield peer
    peer.close()


def test_log_values_without_gelf_are_accepted_and_ignored() -> None:
    for value in (None, "", "/var/log/stor.log", {}, {"level": "debug"}, {"gelf": None}):
        assert parse_gelf(value) is None


@pytest.mark.parametrize("gelf, key", [
    ({"host": ""}, "log.gelf.host"),
    ({"host": "graylog:99999"}, "log.gelf.host"),
    ({"host": "graylog", "level": "loud"}, "log.gelf.level"),
    ({"host": "graylog", "fields": {"env": ["a"]}}, "log.gelf.fields"),
    ({"host": "graylog", "hots": 1}, "log.gelf.hots"),
    ("graylog:12201", "log.gelf"),
])
def test_a_bad_gelf_entry_is_a_config_error_naming_the_key(gelf: Any, key: str, tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"storage_pairs": [[str(tmp_path / "a"), str(tmp_path / "b")]],
                      "log": {"gelf": gelf}})
    assert str(e.value).startswith(key)


def test_a_big_message_is_chunked_and_reassembles() -> None:
    payload = secrets.token_bytes(3 * CHUNK_SIZE)
    parts = chunk(payload, b"12345678")
    assert len(parts) == 4 and all(len(p) <= CHUNK_SIZE for p in parts)
    assert [p[10:12] for p in parts] == [bytes((i, 4)) for i in range(4)]
    assert b"".join(p[12:] for p in parts) == payload
    huge = {"version": "1.1", "short_message": "x", "full_message": secrets.token_hex(2_000_000)}
    too_big = datagrams(huge)  # over 128 chunks: sent without its full text
    assert len(too_big) == 1
    assert "truncated" in json.loads(zlib.decompress(too_big[0]))["full_message"]


def test_stor_sends_its_log_events_to_graylog(stor_process, graylog) -> None:
    stor = stor_process(log={"gelf": {"host": f"127.0.0.1:{graylog.port}",
                                      "fields": {"env": "test"}}})
    hello = graylog.messages(lambda m: m["short_message"].startswith("serving on"))[-1]
    assert hello["version"] == "1.1" and hello["level"] == 6
    assert hello["host"] == socket.gethostname()
    assert hello["_facility"] == "stor" and hello["_env"] == "test"
    assert hello["_namespace"] == "stor.ops.shutdown" and hello["_pid"] == stor.popen.pid
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


def test_gelf_config_is_read_like_the_rest(tmp_path) -> None:
    config = GelfConfig("graylog", 12201)
    assert parse_gelf({"gelf": {"host": "graylog"}}) == config
    assert parse_gelf({"gelf": {"host": "graylog:5140", "level": "warn"}}) == GelfConfig(
        "graylog", 5140, "warn")
