"""The configuration file (docs/SPEC.md §7): the old service's file loads unchanged, every
mistake is a ConfigError whose message names the key.  No reactor."""

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from stor.config import (
    KNOWN_KEYS, Config, S3Config, StatsiteConfig, check_config, load_config, parse_config,
)
from stor.config.memcached import TcpServer
from stor.core.errors import ConfigError
from stor.disk.health import check_storages

REPO = Path(__file__).resolve().parents[2]

# The example from the old service's README, keys and values unchanged.
OLD_EXAMPLE = """\
{
    "statsite": {
        "host": "STATSITE_HOST",
        "prefix": "",
        "sample_rate": 0.1
    },
    "storage_pairs": [
        ["/mnt/data1", "/mnt/data2"],
        ["/mnt/data3", "/mnt/data4"]
    ],
    "writable_pairs_regex": "data[12]",
    "s3_enabled" : true,
    "s3_credentials" : {
        "access_key" : "S3_ACCESS_KEY",
        "secret_key" : "S3_SECRET_KEY",
        "host" : "S3_HOST"
    },
    "memcached_servers": ["MEMCACHED_SERVER1"],
    "secret": "",
    "basic_auth": "writer:writer_pass",
    "rabbitmq_uri": "amqp://"
}
"""


def write(tmp_path: Path, text: str, name: str = "stor.json") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_old_service_example_loads_unchanged(tmp_path: Path) -> None:
    for d in ("/mnt/data1", "/mnt/data2", "/mnt/data3", "/mnt/data4"):
        assert not os.path.exists(d) or os.path.isdir(d)
    config = load_config(write(tmp_path, OLD_EXAMPLE))
    assert config.storage_pairs == (("/mnt/data1", "/mnt/data2"), ("/mnt/data3", "/mnt/data4"))
    assert config.storages == ("/mnt/data1", "/mnt/data2", "/mnt/data3", "/mnt/data4")
    assert config.writable_pairs_regex.pattern == "data[12]"
    assert [bool(config.writable_pairs_regex.search(s)) for s in config.storages] == [
        True, True, False, False,
    ]
    assert config.s3 == S3Config(
        access_key="S3_ACCESS_KEY",
        secret_key="S3_SECRET_KEY",
        endpoint="http://S3_HOST",
        bucket="samples",
    )
    assert config.memcached.servers == (TcpServer("MEMCACHED_SERVER1", 11211),)
    assert config.statsite == StatsiteConfig(
        host="STATSITE_HOST", port=8125, prefix="", sample_rate=0.1
    )
    assert config.basic_auth == "writer:writer_pass"
    assert config.amqp is not None and config.amqp.exchange == "stor"
    assert config.unknown_keys == () and config.warnings == ()  # "secret" is accepted


def test_missing_storage_dirs_are_allowed_and_reported_by_status(tmp_path: Path) -> None:
    # The example's /mnt/dataN need not exist at load time; /status names them instead.
    missing = str(tmp_path / "not-mounted")
    config = parse_config({"storage_pairs": [[missing, str(tmp_path)]]})
    assert config.storages == (missing, str(tmp_path))
    assert check_storages([missing], check_mounts=False)[0].problem == "does not exist"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, json.dumps({"storage_pairs": [["/x/a", "/x/b"]],
                                                     "basic_auth": "w:p"})))
    assert config == Config(storage_pairs=(("/x/a", "/x/b"),), basic_auth="w:p",
                            statsite=StatsiteConfig())
    assert config.writable_pairs_regex.search("/any/path")
    assert config.delete_auth is None
    assert config.listen == "tcp:8080"
    assert config.check_mounts is None  # absent: the old service's behaviour (docs/SPEC.md §2)
    assert config.max_upload_size is None
    assert config.cleanup_tempdir_period == 1800
    assert config.balance_threshold == 1_000_000_000
    assert (config.header_timeout, config.body_timeout, config.shutdown_grace_period) == (30, 120, 30)
    assert config.s3 is None
    assert config.memcached.servers == ()
    assert config.statsite == StatsiteConfig(host="localhost", port=8125, proto="udp")
    assert config.amqp is None
    assert config.warnings == ()


def test_new_keys(tmp_path: Path) -> None:
    config = parse_config(
        {
            "storage_pairs": [["/x/a", "/x/b"]],
            "listen": "tcp:9000:interface=127.0.0.1",
            "check_mounts": False,
            "max_upload_size": 524288000,
            "cleanup_tempdir_period": 60,
            "s3_enabled": True,
            "s3_credentials": {"access_key": "k", "secret_key": "s", "host": "https://s3.example:9000/"},
            "s3_bucket": "other",
            "s3_read": "fallback",
            "s3_fill_local": True,
            "statsite": {"host": "stats:9125", "prefix": "stor", "sample_rate": 1},
            "memcached_servers": ["mc1", "mc2:11212", ""],
            "delete_auth": "admin:secret",
            "header_timeout": 5,
            "body_timeout": 7.5,
        }
    )
    assert config.listen == "tcp:9000:interface=127.0.0.1"
    assert config.check_mounts is False
    assert config.max_upload_size == 524288000
    assert config.cleanup_tempdir_period == 60
    assert config.s3 is not None
    assert config.s3.endpoint == "https://s3.example:9000"
    assert config.s3.bucket == "other"
    assert (config.s3.read, config.s3.fill_local) == ("fallback", True)
    assert config.statsite == StatsiteConfig(host="stats", port=9125, prefix="stor", sample_rate=1.0)
    assert config.memcached.servers == (TcpServer("mc1", 11211), TcpServer("mc2", 11212))
    assert config.delete_auth == "admin:secret"
    assert (config.header_timeout, config.body_timeout) == (5.0, 7.5)


def test_s3_read_defaults_to_first_without_filling_local_storages() -> None:
    config = parse_config(base(s3_enabled=1, s3_credentials=CREDS))
    assert config.s3 is not None and (config.s3.read, config.s3.fill_local) == ("first", False)


def test_null_means_absent_for_every_key() -> None:
    nulls = {key: None for key in KNOWN_KEYS if key != "storage_pairs"}
    config = parse_config(base(**nulls))
    assert config == parse_config(base())


def test_s3_settings_ignored_when_disabled() -> None:
    config = parse_config(
        {"storage_pairs": [["/x/a", "/x/b"]], "s3_enabled": False, "s3_credentials": {"host": ""}}
    )
    assert config.s3 is None


@pytest.mark.parametrize("uri", ["", "http://broker", "redis://x"])
def test_rabbitmq_uri_other_than_amqp_disables_publishing(uri: str) -> None:
    assert parse_config({"storage_pairs": [["/x/a", "/x/b"]], "rabbitmq_uri": uri}).amqp is None


@pytest.mark.parametrize("path", ["conf/stor.dev.json", "conf/stor.json.example"])
def test_shipped_configs_parse_without_warnings(path: str) -> None:
    full = REPO / path
    if not full.exists():
        pytest.skip(f"{path} is not in the repository")
    config = load_config(str(full))
    assert len(config.storage_pairs) >= 1
    assert config.warnings == ()


# --------------------------------------------------------------------- errors

def raises_naming(key: str, raw: object) -> ConfigError:
    """parse_config refuses ``raw`` with exactly one error, and that error is about ``key``."""
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    keys = [p.key for p in info.value.problems]
    assert len(keys) == 1 and keys[0].startswith(key), f"{keys} is not one error about {key!r}"
    return info.value


def warnings_of(raw: dict[str, Any]) -> dict[str, str]:
    """The warnings of a config that loads: key → message."""
    return {w.key: w.message for w in parse_config(raw).warnings}


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value)


def test_unreadable_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_invalid_json(tmp_path: Path) -> None:
    path = write(tmp_path, '{"storage_pairs": [["/a", "/b"]],')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert path in str(info.value)
    assert "JSON" in str(info.value)


@pytest.mark.parametrize("raw", [[], "x", 1, None])
def test_top_level_not_an_object(raw: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert "object" in str(info.value)


@pytest.fixture
def dirs(tmp_path: Path) -> list[str]:
    out = []
    for name in ("d1", "d2", "d3", "d4"):
        (tmp_path / name).mkdir()
        out.append(str(tmp_path / name))
    return out


def with_pairs(pairs: object) -> dict[str, Any]:
    return {"storage_pairs": pairs}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param({}, id="missing"),
        pytest.param(with_pairs(None), id="null"),
        pytest.param(with_pairs([]), id="empty"),
        pytest.param(with_pairs("/mnt/data1"), id="a-string"),
        pytest.param(with_pairs({"a": "b"}), id="an-object"),
    ],
)
def test_storage_pairs_missing_or_not_a_list(raw: dict[str, Any]) -> None:
    raises_naming("storage_pairs", raw)


@pytest.mark.parametrize(
    "pair",
    [
        pytest.param(["/x/a", "/x/b", "/x/c"], id="three"),
        pytest.param(["/x/a"], id="one"),
        pytest.param([], id="none"),
        pytest.param(["/x/a", 5], id="non-string"),
        pytest.param(["/x/a", None], id="null"),
        pytest.param(["/x/a", ""], id="empty-string"),
        pytest.param("/x/a", id="string-not-pair"),
        pytest.param({"a": "/x/a", "b": "/x/b"}, id="object"),
    ],
)
def test_pair_that_is_not_two_paths(pair: object) -> None:
    raises_naming("storage_pairs[1]", with_pairs([["/y/a", "/y/b"], pair]))


def test_member_is_a_regular_file(dirs: list[str], tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"")
    err = raises_naming("storage_pairs[0][1]", with_pairs([[dirs[0], str(f)]]))
    assert str(f) in str(err)


@pytest.mark.parametrize(
    "make_pairs, key",
    [
        pytest.param(lambda d: [[d[0], d[0]]], "storage_pairs[0][1]", id="within-a-pair"),
        pytest.param(lambda d: [[d[0], d[1]], [d[2], d[0]]], "storage_pairs[1][1]", id="across-pairs"),
        pytest.param(lambda d: [[d[0], d[1]], [d[1] + "/", d[2]]], "storage_pairs[1][0]", id="trailing-slash"),
        pytest.param(
            lambda d: [[d[0], d[1]], [d[2], d[1] + "/../" + os.path.basename(d[1])]],
            "storage_pairs[1][1]",
            id="dot-dot",
        ),
    ],
)
def test_storage_listed_twice(dirs: list[str], make_pairs, key: str) -> None:
    raises_naming(key, with_pairs(make_pairs(dirs)))


def test_storage_listed_twice_through_a_symlink(dirs: list[str], tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(dirs[0])
    raises_naming("storage_pairs[0][1]", with_pairs([[dirs[0], str(link)]]))


def base(**extra: object) -> dict[str, Any]:
    return {"storage_pairs": [["/x/a", "/x/b"]], **extra}


CREDS = {"access_key": "k", "secret_key": "s", "host": "s3.example"}


@pytest.mark.parametrize(
    "raw, key",
    [
        pytest.param(base(writable_pairs_regex="data["), "writable_pairs_regex", id="bad-regex"),
        pytest.param(base(writable_pairs_regex="(?P<x"), "writable_pairs_regex", id="bad-regex-group"),
        pytest.param(base(writable_pairs_regex=["data"]), "writable_pairs_regex", id="regex-a-list"),
        pytest.param(base(writable_pairs_regex={"a": 1}), "writable_pairs_regex", id="regex-an-object"),
        pytest.param(base(check_mounts="yes"), "check_mounts", id="check_mounts-string"),
        pytest.param(base(check_mounts=1), "check_mounts", id="check_mounts-int"),
        pytest.param(base(cleanup_tempdir_period=0), "cleanup_tempdir_period", id="period-0"),
        pytest.param(base(cleanup_tempdir_period=-5), "cleanup_tempdir_period", id="period-negative"),
        pytest.param(base(cleanup_tempdir_period="x"), "cleanup_tempdir_period", id="period-string"),
        pytest.param(base(cleanup_tempdir_period=True), "cleanup_tempdir_period", id="period-bool"),
        pytest.param(base(max_upload_size=-1), "max_upload_size", id="max-size-negative"),
        pytest.param(base(max_upload_size=0), "max_upload_size", id="max-size-0"),
        pytest.param(base(max_upload_size=1.5), "max_upload_size", id="max-size-float"),
        pytest.param(base(max_upload_size="500M"), "max_upload_size", id="max-size-string"),
        pytest.param(base(statsite={"host": "h", "sample_rate": "often"}), "statsite.sample_rate", id="rate-word"),
        pytest.param(base(statsite={"host": "h", "proto": "http"}), "statsite.proto", id="statsite-proto"),
        pytest.param(base(statsite={"host": "h", "port": "x"}), "statsite.port", id="statsite-port-word"),
        pytest.param(base(statsite={"host": "h:port"}), "statsite.host", id="statsite-bad-port"),
        pytest.param(base(statsite={"host": 5}), "statsite.host", id="statsite-host-int"),
        pytest.param(base(statsite={"host": "h", "prefix": [3]}), "statsite.prefix", id="statsite-prefix"),
        pytest.param(base(statsite="h:8125"), "statsite", id="statsite-not-object"),
        pytest.param(base(basic_auth=["writer", "pass"]), "basic_auth", id="basic_auth-list"),
        pytest.param(base(basic_auth={"user": "pass"}), "basic_auth", id="basic_auth-object"),
        pytest.param(base(delete_auth="admin"), "delete_auth", id="delete_auth-no-colon"),
        pytest.param(base(delete_auth=":pw"), "delete_auth", id="delete_auth-no-user"),
        pytest.param(base(delete_auth=5), "delete_auth", id="delete_auth-int"),
        pytest.param(base(memcached_servers=["mc:port"]), "memcached_servers", id="mc-bad-port"),
        pytest.param(base(memcached_servers=["mc:0"]), "memcached_servers", id="mc-port-0"),
        pytest.param(base(memcached_servers=["mc:70000"]), "memcached_servers", id="mc-port-big"),
        pytest.param(base(memcached_servers=[":11211"]), "memcached_servers", id="mc-no-host"),
        pytest.param(base(memcached_servers="mc:11211"), "memcached_servers", id="mc-not-list"),
        pytest.param(base(memcached_servers=[11211]), "memcached_servers", id="mc-not-string"),
        pytest.param(base(s3_enabled=[]), "s3_enabled", id="s3_enabled-list"),
        pytest.param(base(s3_enabled={}), "s3_enabled", id="s3_enabled-object"),
        pytest.param(base(s3_enabled="yes"), "s3_credentials", id="s3_enabled-yes-needs-credentials"),
        pytest.param(base(s3_read="last"), "s3_read", id="s3_read-unknown"),
        pytest.param(base(s3_read=True), "s3_read", id="s3_read-bool"),
        pytest.param(base(s3_fill_local=1), "s3_fill_local", id="s3_fill_local-int"),
        pytest.param(base(s3_fill_local="true"), "s3_fill_local", id="s3_fill_local-string"),
        pytest.param(base(header_timeout=0), "header_timeout", id="header_timeout-0"),
        pytest.param(base(header_timeout="30"), "header_timeout", id="header_timeout-string"),
        pytest.param(base(body_timeout=-1), "body_timeout", id="body_timeout-negative"),
        pytest.param(base(shutdown_grace_period=-1), "shutdown_grace_period", id="grace-negative"),
        pytest.param(base(cleanup_tempdir_period="soon"), "cleanup_tempdir_period", id="period-word"),
        pytest.param(base(cleanup_tempdir_period="0"), "cleanup_tempdir_period", id="period-string-0"),
        pytest.param(base(s3_enabled=True), "s3_credentials", id="s3-no-credentials"),
        pytest.param(base(s3_enabled=True, s3_credentials="k:s@h"), "s3_credentials", id="s3-creds-string"),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "secret_key": ""}),
            "s3_credentials.secret_key",
            id="s3-empty-secret",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={k: v for k, v in CREDS.items() if k != "access_key"}),
            "s3_credentials.access_key",
            id="s3-no-access-key",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "host": "ftp://s3.example"}),
            "s3_credentials.host",
            id="s3-host-ftp",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "host": "http://"}),
            "s3_credentials.host",
            id="s3-host-empty-url",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "host": "s3.example:port"}),
            "s3_credentials.host",
            id="s3-host-bad-port",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "host": "s3.example:99999"}),
            "s3_credentials.host",
            id="s3-host-port-out-of-range",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials={**CREDS, "host": "s3 example"}),
            "s3_credentials.host",
            id="s3-host-with-space",
        ),
        pytest.param(
            base(s3_enabled=True, s3_credentials=CREDS, s3_bucket=""), "s3_bucket", id="s3-bucket-empty"
        ),
        pytest.param(base(listen=""), "listen", id="listen-empty"),
        pytest.param(base(listen=8080), "listen", id="listen-int"),
        pytest.param(base(listen="bogus:1"), "listen", id="listen-unknown-type"),
        pytest.param(base(listen="tcp:notaport"), "listen", id="listen-port-word"),
        pytest.param(base(listen="tcp:80800"), "listen", id="listen-port-too-big"),
        pytest.param(base(listen="tcp:8080:colour=blue"), "listen", id="listen-unknown-argument"),
        pytest.param(base(listen="ssl:8443:privateKey=/nonexistent/key.pem"), "listen", id="listen-ssl-no-key"),
        pytest.param(base(rabbitmq_uri=5), "rabbitmq_uri", id="rabbitmq-int"),
        pytest.param(base(balance_threshold=-1), "balance_threshold", id="threshold-negative"),
    ],
)
def test_wrong_value_names_its_key(raw: dict[str, Any], key: str) -> None:
    raises_naming(key, raw)


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_json_nan_and_infinity_literals(tmp_path: Path, literal: str) -> None:
    # Python's json accepts these non-standard literals.  NaN makes the periodic
    # sweep die with "nan is not greater than or equal to 0 seconds" after start;
    # Infinity means it never runs again.  Neither is a period.
    text = '{"storage_pairs": [["/x/a", "/x/b"]], "cleanup_tempdir_period": %s}' % literal
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert "cleanup_tempdir_period" in str(info.value)


def test_each_problem_is_one_line_starting_with_its_key() -> None:
    for raw in (base(writable_pairs_regex="data["), with_pairs([["/a", "/b", "/c"]])):
        with pytest.raises(ConfigError) as info:
            parse_config(raw)
        for problem in info.value.problems:
            assert "\n" not in str(problem)
            assert re.match(r"^[a-z_\[\]0-9.]+: ", str(problem))


# ------------------------------------------------------- every error in one run

def test_every_error_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({
        "storage_pairs": [["/x/a", "/x/b"], ["/x/c"]],
        "writable_pairs_regex": "data[",
        "max_upload_size": "500M",
        "statsite": {"proto": "http", "port": 0},
        "log": {"glef": {"host": "graylog"}},
    }))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.key for p in info.value.problems] == [
        "storage_pairs[1]", "writable_pairs_regex", "max_upload_size",
        "statsite.port", "statsite.proto", "log.glef",
    ]
    assert str(info.value).count("\n") == 5  # one line each


def test_check_config_returns_errors_and_warnings_without_raising(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"storage_pairs": [], "colour": "blue"}))
    checked = check_config(path)
    assert checked.config is None
    assert [p.key for p in checked.errors] == ["storage_pairs"]
    assert [p.key for p in checked.warnings] == ["colour", "basic_auth"]


def test_a_file_that_is_not_json_is_one_error_and_nothing_else(tmp_path: Path) -> None:
    checked = check_config(write(tmp_path, '{"storage_pairs": [["/a", "/b"]], "colour": '))
    assert len(checked.errors) == 1 and checked.errors[0].key == ""
    assert checked.warnings == ()


# ------------------------------------------------------- duplicate keys

@pytest.mark.parametrize("text, key", [
    ('{"storage_pairs": [["/x/a", "/x/b"]], "basic_auth": "w:p", "basic_auth": ""}', "basic_auth"),
    ('{"storage_pairs": [["/x/a", "/x/b"]], "s3_credentials": {"host": "a", "host": "b"}}',
     "s3_credentials.host"),
    ('{"storage_pairs": [["/x/a", "/x/b"]], "log": [["Gelf", "min_level", "info", "socket",'
     ' {"host": "g", "port": 1, "port": 2}]]}', "log[0][4].port"),
    ('{"storage_pairs": [["/x/a", "/x/b"]], "listen": "tcp:1", "listen": "tcp:2",'
     ' "listen": "tcp:3"}', "listen"),
])
def test_a_key_given_twice_in_one_object_is_an_error_naming_it(tmp_path: Path, text: str,
                                                                key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert [p.key for p in info.value.problems] == [key]
    assert "more than once" in str(info.value)


def test_a_repeated_key_and_other_errors_are_reported_together(tmp_path: Path) -> None:
    text = '{"storage_pairs": [], "listen": "tcp:1", "listen": "tcp:2", "check_mounts": 1}'
    checked = check_config(write(tmp_path, text))
    assert [p.key for p in checked.errors] == ["listen", "storage_pairs", "check_mounts"]


# ------------------------------------------------------- unknown keys

def test_an_unknown_top_level_key_is_a_warning_with_the_nearest_key() -> None:
    config = parse_config(base(basic_auth="w:p", lisen="tcp:9000", colour="blue",
                               s3_enable=True))
    assert config.unknown_keys == ("colour", "lisen", "s3_enable")
    found = {w.key: w.message for w in config.warnings}
    assert found["lisen"] == 'is not a stor key: ignored (did you mean "listen"?)'
    assert found["s3_enable"].endswith('(did you mean "s3_enabled"?)')
    assert found["colour"] == "is not a stor key: ignored"
    assert config.listen == "tcp:8080" and config.s3 is None  # ignored, as said


@pytest.mark.parametrize("raw, key, hint", [
    (base(basic_auth="w:p", statsite={"hots": "stats"}), "statsite.hots", '"host"'),
    (base(basic_auth="w:p", statsite={"protocol": "tcp"}), "statsite.protocol", '"proto"'),
    (base(basic_auth="w:p", s3_credentials={**CREDS, "secret": "x"}), "s3_credentials.secret",
     '"secret_key"'),
])
def test_an_unknown_key_in_an_old_section_is_a_warning_with_a_hint(raw: dict[str, Any], key: str,
                                                                     hint: str) -> None:
    found = warnings_of(raw)
    assert list(found) == [key]
    assert found[key].endswith(f"(did you mean {hint}?)")


@pytest.mark.parametrize("log, key, hint", [
    ({"glef": {"host": "graylog"}}, "log.glef", '"gelf"'),
    ({"gelf": {"host": "graylog", "levle": "debug"}}, "log.gelf.levle", '"level"'),
    ({"gelf": {"host": "graylog", "facilty": "stor"}}, "log.gelf.facilty", '"facility"'),
])
def test_an_unknown_key_in_stors_own_log_form_is_an_error_with_a_hint(log: object, key: str,
                                                                      hint: str) -> None:
    err = raises_naming(key, base(log=log))
    assert str(err).endswith(f"(did you mean {hint}?)")


# ------------------------------------------------------- the old service's meanings

# The config t/01_upload_download.t of the old service writes (encode_json of its hash).
def old_test_config(storages: list[str]) -> dict[str, Any]:
    return {
        "storage_pairs": [[storages[0], storages[1]], [storages[2], storages[3]]],
        "secret": "test secret",
        "basic_auth": "user:pass",
        "s3_credentials": {"access_key": "some_key", "secret_key": "another_key", "host": "host"},
        "s3_enabled": 0,
        "log": [],
    }


def test_the_old_services_test_config_loads_with_s3_off(tmp_path: Path, dirs: list[str]) -> None:
    config = load_config(write(tmp_path, json.dumps(old_test_config(dirs))))
    assert config.storages == tuple(dirs)
    assert config.s3 is None
    assert config.basic_auth == "user:pass"
    assert config.log.outputs == ()
    assert config.statsite == StatsiteConfig(host="localhost", port=8125, proto="udp")
    assert config.warnings == () and config.unknown_keys == ()


@pytest.mark.parametrize("value, enabled", [
    (0, False), (0.0, False), ("", False), ("0", False), (None, False), (False, False),
    (1, True), ("1", True), (True, True), (2, True), (-1, True), (0.5, True),
    ("yes", True), ("false", True), ("0.0", True), ("00", True), (" ", True),
])
def test_s3_enabled_is_perl_truth(value: object, enabled: bool) -> None:
    config = parse_config(base(basic_auth="w:p", s3_enabled=value, s3_credentials=CREDS))
    assert (config.s3 is not None) is enabled
    assert config.s3 is None or config.s3.read_through


@pytest.mark.parametrize("value", ["false", "no", "off", "0.0"])
def test_s3_enabled_strings_that_look_false_are_true_with_a_warning(value: str) -> None:
    found = warnings_of(base(basic_auth="w:p", s3_enabled=value, s3_credentials=CREDS))
    assert list(found) == ["s3_enabled"]
    assert json.dumps(value) in found["s3_enabled"] and "S3 is read" in found["s3_enabled"]


@pytest.mark.parametrize("raw", [base(), base(writable_pairs_regex=None)], ids=["absent", "null"])
def test_writable_pairs_regex_null_or_absent_is_any(raw: dict[str, Any]) -> None:
    regex = parse_config(raw).writable_pairs_regex
    assert regex.pattern == ".*" and regex.search("/mnt/anything")


def test_writable_pairs_regex_number_is_a_pattern_as_in_perl() -> None:
    config = parse_config(with_pairs([["/mnt/data1", "/mnt/data2"], ["/mnt/data3", "/mnt/data4"]])
                          | {"writable_pairs_regex": 2, "basic_auth": "w:p"})
    assert [bool(config.writable_pairs_regex.search(s)) for s in config.storages] == [
        False, True, False, False]


def test_a_writable_regex_matching_no_storage_is_a_warning() -> None:
    found = warnings_of(base(basic_auth="w:p", writable_pairs_regex="data[12]$"))
    assert list(found) == ["writable_pairs_regex"] and "507" in found["writable_pairs_regex"]


@pytest.mark.parametrize("value, seconds", [(1800, 1800.0), ("1800", 1800.0), (" 60 ", 60.0),
                                            (0.5, 0.5), ("1e3", 1000.0)])
def test_cleanup_tempdir_period_is_a_perl_number(value: object, seconds: float) -> None:
    assert parse_config(base(cleanup_tempdir_period=value)).cleanup_tempdir_period == seconds


@pytest.mark.parametrize("raw", [base(), base(basic_auth=""), base(basic_auth=None)])
def test_no_basic_auth_is_a_read_only_host_with_a_warning(raw: dict[str, Any]) -> None:
    config = parse_config(raw)
    assert config.basic_auth is None
    assert [w.key for w in config.warnings] == ["basic_auth"]
    assert "read-only" in config.warnings[0].message


def test_basic_auth_without_a_colon_is_kept_with_a_warning() -> None:
    # the old service compared the request's credentials with the string as is
    config = parse_config(base(basic_auth="writer"))
    assert config.basic_auth == "writer"
    assert [w.key for w in config.warnings] == ["basic_auth"]


def test_basic_auth_number_is_its_perl_string() -> None:
    assert parse_config(base(basic_auth=1234)).basic_auth == "1234"


@pytest.mark.parametrize("secret", ["", "test secret", 5, ["a", "b"], {"k": "v"}, None])
def test_secret_is_accepted_and_unused(secret: object) -> None:
    config = parse_config(base(basic_auth="w:p", secret=secret))
    assert config == parse_config(base(basic_auth="w:p"))
    assert config.warnings == ()


@pytest.mark.parametrize("value, expected", [(None, None), (True, True), (False, False)])
def test_check_mounts_has_three_cases(value: object, expected: bool | None) -> None:
    raw = base() if value is None else base(check_mounts=value)
    assert parse_config(raw).check_mounts is expected


def test_s3_read_and_fill_local_without_s3_reads_are_warnings() -> None:
    found = warnings_of(base(basic_auth="w:p", s3_read="fallback", s3_fill_local=True))
    assert sorted(found) == ["s3_fill_local", "s3_read"]


# ------------------------------------------------------- listen, without a reactor

@pytest.mark.parametrize("listen", ["tcp:8080", "tcp:0:interface=127.0.0.1", "tcp6:8080:interface=\\:\\:1",
                                    "unix:/run/stor/http.sock", "unix:stor.sock:mode=660"])
def test_listen_endpoints_stor_can_use(listen: str) -> None:
    assert parse_config(base(listen=listen)).listen == listen


@pytest.mark.acceptance('process')
def test_reading_a_config_neither_imports_nor_installs_a_reactor(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, json.dumps(base(listen="tcp:8080:interface=127.0.0.1")))
    code = ("import sys; from stor.config import load_config; load_config(sys.argv[1]); "
            "print('twisted.internet.reactor' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
