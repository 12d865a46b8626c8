"""The memcached keys of the config file: servers as the old service took them, a timeout, a prefix.

Every bad value is an error naming its key (the entry's index for a server);
nothing here needs a reactor or a memcached.
"""

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.config import parse_config
from stor.config.memcached import (
    MAX_PREFIX_BYTES, MemcachedConfig, TcpServer, UnixServer, parse_memcached, parse_server,
)
from stor.config.problems import Problem, Problems
from stor.core.errors import ConfigError


def parse(**raw: Any) -> tuple[MemcachedConfig, Problems]:
    problems = Problems()
    return parse_memcached(raw, problems), problems


def parsed(**raw: Any) -> MemcachedConfig:
    config, problems = parse(**raw)
    assert problems.errors == problems.warnings == []
    return config


def error_keys(**raw: Any) -> list[str]:
    _, problems = parse(**raw)
    assert problems.errors, "expected an error"
    return [p.key for p in problems.errors]


def test_nothing_configured_is_the_lru_alone() -> None:
    assert parsed() == MemcachedConfig(servers=(), timeout=0.25, prefix="")
    assert parsed(memcached_servers=None, memcached_timeout=None, memcached_prefix=None) == MemcachedConfig()
    assert parsed(memcached_servers=[]) == MemcachedConfig()


@pytest.mark.parametrize(
    "entry, server, name",
    [
        ("mc1", TcpServer("mc1", 11211), "mc1:11211"),
        ("mc2.example.com:11212", TcpServer("mc2.example.com", 11212), "mc2.example.com:11212"),
        ("10.0.0.7:1", TcpServer("10.0.0.7", 1), "10.0.0.7:1"),
        ("[::1]:11213", TcpServer("::1", 11213), "[::1]:11213"),
        ("[2001:DB8::0:1]", TcpServer("2001:db8::1", 11211), "[2001:db8::1]:11211"),
        ("/var/run/memcached/memcached.sock", UnixServer("/var/run/memcached/memcached.sock"),
         "/var/run/memcached/memcached.sock"),
    ],
)
def test_the_forms_of_a_server(entry: str, server: object, name: str) -> None:
    assert parsed(memcached_servers=[entry]).servers == (server,)
    assert server.name == name  # type: ignore[attr-defined]


def test_the_old_services_list_keeps_its_order() -> None:
    config = parsed(memcached_servers=["mc1", "/tmp/mc.sock", "mc2:11212"])
    assert config.servers == (TcpServer("mc1"), UnixServer("/tmp/mc.sock"), TcpServer("mc2", 11212))


def test_empty_and_repeated_entries_are_ignored_with_a_warning() -> None:
    config, problems = parse(memcached_servers=["mc1", "", "mc1:11211", "mc2"])
    assert config.servers == (TcpServer("mc1"), TcpServer("mc2"))
    assert problems.errors == []
    assert [p.key for p in problems.warnings] == ["memcached_servers[1]", "memcached_servers[2]"]


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("mc:11211", id="a-string"),
        pytest.param({"address": "mc:11211"}, id="an-object"),
        pytest.param(11211, id="a-number"),
    ],
)
def test_servers_must_be_a_list(value: object) -> None:
    assert error_keys(memcached_servers=value) == ["memcached_servers"]


@pytest.mark.parametrize(
    "entry, says",
    [
        pytest.param(11211, "must be a string", id="number"),
        pytest.param(None, "must be a string", id="null"),
        pytest.param(["mc", 11211], "must be a string", id="list"),
        pytest.param("mc:port", "invalid port", id="port-word"),
        pytest.param("mc:0", "invalid port", id="port-0"),
        pytest.param("mc:65536", "invalid port", id="port-too-big"),
        pytest.param("mc:", "invalid port", id="port-empty"),
        pytest.param("mc:+1", "invalid port", id="port-signed"),
        pytest.param("mc:١٢", "invalid port", id="port-arabic-digits"),
        pytest.param(":11211", "no host name", id="no-host"),
        pytest.param("mc 1:11211", "not a host name", id="host-with-space"),
        pytest.param("mc\t", "not a host name", id="host-with-tab"),
        pytest.param("mc/data:11211", "not a host name", id="host-with-slash"),
        pytest.param("-mc", "not a host name", id="host-dash-first"),
        pytest.param("::1", "IPv6 address goes in brackets", id="bare-ipv6"),
        pytest.param("fe80::1:11211", "IPv6 address goes in brackets", id="bare-ipv6-port"),
        pytest.param("[::1", "no closing", id="unclosed-bracket"),
        pytest.param("[::1]11211", "expected \":port\"", id="no-colon-after-bracket"),
        pytest.param("[mc1]:11211", "not an IPv6 address", id="name-in-brackets"),
        pytest.param("[10.0.0.1]:11211", "not an IPv6 address", id="ipv4-in-brackets"),
        pytest.param("[::1]:0", "invalid port", id="ipv6-port-0"),
        pytest.param("/" + "s" * 107, "at most 107 bytes", id="socket-path-too-long"),
        pytest.param("/run/mc\0.sock", "NUL", id="socket-path-nul"),
    ],
)
def test_a_bad_server_is_an_error_naming_its_entry(entry: object, says: str) -> None:
    _, problems = parse(memcached_servers=["mc0", entry])
    assert len(problems.errors) == 1
    assert problems.errors[0].key == "memcached_servers[1]"
    assert says in problems.errors[0].message


def test_a_socket_path_of_107_bytes_fits() -> None:
    path = "/" + "s" * 106
    assert parsed(memcached_servers=[path]).servers == (UnixServer(path),)


def test_every_bad_entry_is_reported_at_once() -> None:
    assert error_keys(memcached_servers=["mc:0", "mc1", 5, "[::1"]) == [
        "memcached_servers[0]", "memcached_servers[2]", "memcached_servers[3]",
    ]


@given(st.text(max_size=40))
def test_a_server_reads_back_from_its_name(text: str) -> None:
    """Whatever is accepted is a server whose name is read back as the same server."""
    try:
        server = parse_server(text)
    except ValueError:
        return
    assert parse_server(server.name) == server


# -- the timeout -------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [(0.1, 0.1), (2, 2.0), (0.25, 0.25)])
def test_timeout(value: object, seconds: float) -> None:
    assert parsed(memcached_timeout=value).timeout == seconds


@pytest.mark.parametrize("value", [0, -1, "0.25", True, float("nan"), float("inf"), [0.25]])
def test_a_bad_timeout(value: object) -> None:
    assert error_keys(memcached_timeout=value) == ["memcached_timeout"]


# -- the prefix --------------------------------------------------------------


@pytest.mark.parametrize(
    "prefix",
    ["", "stor-host1:", "ünïcödé/", "x" * MAX_PREFIX_BYTES, "é" * (MAX_PREFIX_BYTES // 2)],
)
def test_a_prefix(prefix: str) -> None:
    assert parsed(memcached_prefix=prefix).prefix == prefix


@pytest.mark.parametrize(
    "value, says",
    [
        pytest.param(5, "must be a string", id="number"),
        pytest.param(["a"], "must be a string", id="list"),
        pytest.param("host 1:", "whitespace or control", id="space"),
        pytest.param("host\t", "whitespace or control", id="tab"),
        pytest.param("host\r\n", "whitespace or control", id="newline"),
        pytest.param("host\0", "whitespace or control", id="nul"),
        pytest.param("host\x7f", "whitespace or control", id="del"),
        pytest.param("host\u00a0", "whitespace or control", id="no-break-space"),
        pytest.param("host\u200b", "whitespace or control", id="zero-width-space"),
        pytest.param("host\ud800", "whitespace or control", id="lone-surrogate"),
        pytest.param("x" * (MAX_PREFIX_BYTES + 1), "at most 186", id="too-long"),
        pytest.param("é" * (MAX_PREFIX_BYTES // 2 + 1), "at most 186", id="too-long-in-bytes"),
    ],
)
def test_a_bad_prefix(value: object, says: str) -> None:
    _, problems = parse(memcached_prefix=value)
    assert [p.key for p in problems.errors] == ["memcached_prefix"]
    assert says in problems.errors[0].message


@given(st.text())
def test_an_accepted_prefix_makes_valid_memcached_keys(prefix: str) -> None:
    """A key is at most 250 bytes, with no whitespace or control byte (memcached's rules)."""
    config, problems = parse(memcached_prefix=prefix)
    if problems.errors:
        return
    key = config.prefix.encode() + hashlib.sha256(b"x").hexdigest().encode()
    assert len(key) <= 250
    assert not any(b <= 0x20 or b == 0x7F for b in key)


# -- in the whole config -----------------------------------------------------


def test_the_config_carries_the_memcached_keys() -> None:
    config = parse_config({
        "storage_pairs": [["/x/a", "/x/b"]],
        "memcached_servers": ["mc1:11212", "/run/mc.sock"],
        "memcached_timeout": 0.5,
        "memcached_prefix": "host1:",
    })
    assert config.memcached == MemcachedConfig(
        servers=(TcpServer("mc1", 11212), UnixServer("/run/mc.sock")), timeout=0.5, prefix="host1:")
    assert config.unknown_keys == ()


def test_the_config_reports_every_memcached_error() -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config({"storage_pairs": [["/x/a", "/x/b"]], "memcached_servers": ["mc1", "mc:0"],
                      "memcached_prefix": "a b"})
    assert [p.key for p in raised.value.problems] == ["memcached_servers[1]", "memcached_prefix"]
    assert "invalid port" in raised.value.problems[0].message


def test_problem_names_its_key() -> None:
    _, problems = parse(memcached_servers=["mc:0"])
    assert str(problems.errors[0]) == "memcached_servers[0]: 'mc:0' has an invalid port (1 to 65535)"
    assert problems.errors[0] == Problem("memcached_servers[0]", "'mc:0' has an invalid port (1 to 65535)")
