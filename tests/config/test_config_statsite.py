"""The ``statsite`` section read as Net::Statsite::Client read it (SPEC §6). No reactor."""

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.config import StatsiteConfig, parse_config
from stor.config.problems import Problems
from stor.config.statsite import parse_statsite
from stor.core.errors import ConfigError


def parsed(value: object) -> tuple[StatsiteConfig | None, Problems]:
    problems = Problems()
    return parse_statsite(value, problems), problems


def test_the_old_readme_example_means_what_it_meant() -> None:
    config, problems = parsed({"host": "STATSITE_HOST", "prefix": "stor.dev", "sample_rate": 0.1})
    assert config == StatsiteConfig(host="STATSITE_HOST", port=8125, proto="udp",
                                    prefix="stor.dev", sample_rate=0.1)
    assert not problems.errors and not problems.warnings


@pytest.mark.parametrize("value", [None, {}], ids=["absent-or-null", "empty"])
def test_absent_null_or_empty_is_the_old_clients_defaults(value: object) -> None:
    # the old service always built its client: no statsite key meant localhost:8125 over UDP
    config, problems = parsed(value)
    assert config == StatsiteConfig(host="localhost", port=8125, proto="udp", prefix="",
                                    sample_rate=1.0)
    assert not problems.warnings and not problems.errors
    assert parse_config({"storage_pairs": [["/x/a", "/x/b"]]}).statsite == config
    assert parse_config({"storage_pairs": [["/x/a", "/x/b"]], "statsite": None}).statsite == config


def test_port_and_proto_are_read() -> None:
    assert parsed({"host": "stats", "port": 9125, "proto": "tcp"})[0] == StatsiteConfig(
        host="stats", port=9125, proto="tcp")
    assert parsed({"port": "9125"})[0] == StatsiteConfig(port=9125)  # Perl read "9125" as 9125


def test_a_port_written_after_the_host_wins_as_in_io_socket_inet() -> None:
    assert parsed({"host": "stats:9000", "port": 9125})[0] == StatsiteConfig(host="stats", port=9000)
    assert parsed({"host": "[::1]:9000"})[0] == StatsiteConfig(host="::1", port=9000)


@pytest.mark.parametrize("prefix, expected", [
    ("stor.dev", "stor.dev"), ("", ""), (None, ""), ("0", ""), (0, ""), (7, "7"),
])
def test_prefix_is_used_when_perl_finds_it_true(prefix: Any, expected: str) -> None:
    config, problems = parsed({"prefix": prefix})
    assert config is not None and config.prefix == expected and not problems.errors


def test_sample_rate_as_a_string_is_a_number_as_in_perl() -> None:
    config, _ = parsed({"sample_rate": "0.5"})
    assert config is not None and config.sample_rate == 0.5


@pytest.mark.parametrize("rate, says", [(0, "sends no metrics"), (-1, "sends no metrics"),
                                        (2, "above 1")])
def test_a_rate_outside_0_1_is_kept_with_a_warning(rate: float, says: str) -> None:
    config, problems = parsed({"sample_rate": rate})
    assert config is not None and config.sample_rate == rate and not problems.errors
    assert [w.key for w in problems.warnings] == ["statsite.sample_rate"]
    assert says in problems.warnings[0].message


def test_an_empty_host_is_localhost_with_a_warning() -> None:
    config, problems = parsed({"host": ""})
    assert config == StatsiteConfig(host="localhost")
    assert [w.key for w in problems.warnings] == ["statsite.host"]


def test_an_unknown_option_is_a_warning_naming_it() -> None:
    config, problems = parsed({"host": "h", "protocol": "tcp"})
    assert config == StatsiteConfig(host="h")
    assert [w.key for w in problems.warnings] == ["statsite.protocol"]
    assert problems.warnings[0].message.endswith('(did you mean "proto"?)')


@pytest.mark.parametrize("value, key", [
    ("h:8125", "statsite"),
    ({"host": 5}, "statsite.host"),
    ({"host": "h:port"}, "statsite.host"),
    ({"port": 0}, "statsite.port"),
    ({"port": 70000}, "statsite.port"),
    ({"port": "statsd"}, "statsite.port"),
    ({"proto": "UDP"}, "statsite.proto"),
    ({"proto": "http"}, "statsite.proto"),
    ({"prefix": {"a": 1}}, "statsite.prefix"),
    ({"sample_rate": "often"}, "statsite.sample_rate"),
    ({"sample_rate": True}, "statsite.sample_rate"),
])
def test_a_bad_value_is_an_error_naming_its_key(value: object, key: str) -> None:
    config, problems = parsed(value)
    assert [e.key for e in problems.errors] == [key]
    with pytest.raises(ConfigError) as e:
        parse_config({"storage_pairs": [["/x/a", "/x/b"]], "statsite": value})
    assert [p.key for p in e.value.problems] == [key]


def test_warnings_travel_with_the_config() -> None:
    config = parse_config({"storage_pairs": [["/x/a", "/x/b"]], "basic_auth": "w:p",
                           "statsite": {"host": "h", "sample_rate": 0}})
    assert [w.key for w in config.warnings] == ["statsite.sample_rate"]


@given(host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z0-9-]{1,10}){0,2}", fullmatch=True),
       port=st.integers(1, 65535), other=st.integers(1, 65535))
def test_host_and_port_round_trip(host: str, port: int, other: int) -> None:
    assert parsed({"host": host, "port": port})[0] == StatsiteConfig(host=host, port=port)
    assert parsed({"host": f"{host}:{port}", "port": other})[0] == StatsiteConfig(host=host, port=port)
