"""The configuration file (docs/SPEC.md §7): the old service's file loads unchanged, every
mistake is a ConfigError whose message names the key.  No reactor."""

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from stor.config import Config, S3Config, StatsiteConfig, load_config, parse_config
from stor.config.memcached import TcpServer
from stor.core.errors import ConfigError
from stor.fs.health import check_storages

REPO = Path(__file__).resolve().parent.parent

# The example from the old service's README (seed/stor-readme.txt), keys and values unchanged.
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
    assert config.unknown_keys == ()  # "secret" is one of the old keys, accepted


def test_missing_storage_dirs_are_allowed_and_reported_by_status(tmp_path: Path) -> None:
    # The example's /mnt/dataN need not exist at load time; /status names them instead.
    missing = str(tmp_path / "not-mounted")
    config = parse_config({"storage_pairs": [[missing, str(tmp_path)]]})
    assert config.storages == (missing, str(tmp_path))
    assert check_storages([missing], check_mounts=False)[0].problem == "does not exist"


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, json.dumps({"storage_pairs": [["/x/a", "/x/b"]]})))
    assert config == Config(storage_pairs=(("/x/a", "/x/b"),))
    assert config.writable_pairs_regex.search("/any/path")
    assert config.basic_auth is None
    assert config.listen == "tcp:8080"
    assert config.check_mounts is None  # absent: the old service's behaviour (docs/SPEC.md §2)
    assert config.max_upload_size is None
    assert config.cleanup_tempdir_period == 1800
    assert config.balance_threshold == 1_000_000_000
    assert config.s3 is None
    assert config.memcached.servers == ()
    assert config.statsite is None
    assert config.amqp is None


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
            "statsite": {"host": "stats:9125", "prefix": "stor", "sample_rate": 1},
            "memcached_servers": ["mc1", "mc2:11212", ""],
        }
    )
    assert config.listen == "tcp:9000:interface=127.0.0.1"
    assert config.check_mounts is False
    assert config.max_upload_size == 524288000
    assert config.cleanup_tempdir_period == 60
    assert config.s3 is not None
    assert config.s3.endpoint == "https://s3.example:9000"
    assert config.s3.bucket == "other"
    assert config.statsite == StatsiteConfig(host="stats", port=9125, prefix="stor", sample_rate=1.0)
    assert config.memcached.servers == (TcpServer("mc1", 11211), TcpServer("mc2", 11212))


def test_unknown_keys_are_accepted_and_listed() -> None:
    config = parse_config({"storage_pairs": [["/x/a", "/x/b"]], "colour": "blue", "log": "/var/log/x"})
    assert config.unknown_keys == ("colour",)


def test_s3_settings_ignored_when_disabled() -> None:
    config = parse_config(
        {"storage_pairs": [["/x/a", "/x/b"]], "s3_enabled": False, "s3_credentials": {"host": ""}}
    )
    assert config.s3 is None


@pytest.mark.parametrize("uri", ["", "http://broker", "redis://x"])
def test_rabbitmq_uri_other_than_amqp_disables_publishing(uri: str) -> None:
    assert parse_config({"storage_pairs": [["/x/a", "/x/b"]], "rabbitmq_uri": uri}).amqp is None


@pytest.mark.parametrize("path", ["conf/stor.dev.json", "conf/stor.json.example"])
def test_shipped_configs_parse(path: str) -> None:
    full = REPO / path
    if not full.exists():
        pytest.skip(f"{path} is not in the repository")
    config = load_config(str(full))
    assert len(config.storage_pairs) >= 1


# --------------------------------------------------------------------- errors

def raises_naming(key: str, raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert key in str(info.value), f"{str(info.value)!r} does not name {key!r}"
    return info.value


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
        pytest.param(base(writable_pairs_regex=5), "writable_pairs_regex", id="regex-not-string"),
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
        pytest.param(base(basic_auth="writer"), "basic_auth", id="basic_auth-no-colon"),
        pytest.param(base(basic_auth=5), "basic_auth", id="basic_auth-int"),
        pytest.param(base(memcached_servers=["mc:port"]), "memcached_servers", id="mc-bad-port"),
        pytest.param(base(memcached_servers=["mc:0"]), "memcached_servers", id="mc-port-0"),
        pytest.param(base(memcached_servers=["mc:70000"]), "memcached_servers", id="mc-port-big"),
        pytest.param(base(memcached_servers=[":11211"]), "memcached_servers", id="mc-no-host"),
        pytest.param(base(memcached_servers="mc:11211"), "memcached_servers", id="mc-not-list"),
        pytest.param(base(memcached_servers=[11211]), "memcached_servers", id="mc-not-string"),
        pytest.param(base(s3_enabled="yes"), "s3_enabled", id="s3_enabled-string"),
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


def test_error_is_one_line() -> None:
    for raw in (base(writable_pairs_regex="data["), with_pairs([["/a", "/b", "/c"]])):
        with pytest.raises(ConfigError) as info:
            parse_config(raw)
        assert "\n" not in str(info.value)
        assert re.match(r"^[a-z_\[\]0-9.]+: ", str(info.value))
