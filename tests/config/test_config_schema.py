"""stor/config/schema.json: a JSON Schema of the config file that cannot drift from the parser.

The schema lists exactly the keys the parser reads, describes each, and
accepts every config stor ships and the old service's documented ones; on
values whose only fault is their shape, schema and parser agree.  No reactor.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from stor.config import KNOWN_KEYS, check_config, schema
from test_config import OLD_EXAMPLE, old_test_config

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (REPO / "conf").iterdir() if ".json" in p.name)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    document = schema()
    Draft202012Validator.check_schema(document)
    return Draft202012Validator(document)


def schema_errors(validator: Draft202012Validator, document: object) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


def test_the_schema_names_exactly_the_keys_the_parser_reads() -> None:
    assert set(schema()["properties"]) == KNOWN_KEYS


def test_every_key_is_described_with_its_types() -> None:
    for key, spec in schema()["properties"].items():
        assert len(spec.get("description", "")) > 20, key
        if key != "secret":  # accepted whatever it is, and unused
            assert {"type", "enum", "anyOf"} & set(spec), key


def test_the_schema_ships_with_the_package() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"stor.config" = ["schema.json"]' in pyproject


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(validator: Draft202012Validator, path: Path) -> None:
    assert schema_errors(validator, json.loads(path.read_text())) == []


def test_there_are_shipped_configs() -> None:
    assert len(SHIPPED) >= 2


def test_the_old_services_readme_example_validates(validator: Draft202012Validator) -> None:
    assert schema_errors(validator, json.loads(OLD_EXAMPLE)) == []


def test_the_old_services_test_config_validates(validator: Draft202012Validator) -> None:
    assert schema_errors(validator, old_test_config(["/a", "/b", "/c", "/d"])) == []


PAIRS = [["/nonexistent/a", "/nonexistent/b"]]

# (the config's keys besides storage_pairs and basic_auth, whether it is valid)
AGREEMENT: list[Any] = [
    ({}, True),
    ({"s3_enabled": "0", "cleanup_tempdir_period": "1800", "writable_pairs_regex": None}, True),
    ({"s3_enabled": [1]}, False),
    ({"check_mounts": "yes"}, False),
    ({"max_upload_size": 0}, False),
    ({"max_upload_size": 1.5}, False),
    ({"header_timeout": 0}, False),
    ({"shutdown_grace_period": 0}, True),
    ({"shutdown_grace_period": -1}, False),
    ({"s3_read": "fallback"}, True),
    ({"s3_read": "later"}, False),
    ({"s3_fill_local": "true"}, False),
    ({"s3_outbox_concurrency": 257}, False),
    ({"s3_region": "EU West"}, False),
    ({"delete_auth": "admin"}, False),
    ({"delete_auth": "admin:pw"}, True),
    ({"statsite": {"proto": "http"}}, False),
    ({"statsite": {"host": "h", "port": "8125", "sample_rate": "0.5"}}, True),
    ({"log": []}, True),
    ({"log": {"gelf": {"host": "graylog"}}}, True),
    ({"log": {"glef": {"host": "graylog"}}}, False),
    ({"log": {"gelf": {"host": "graylog", "level": "loud"}}}, False),
    ({"log": {"gelf": {"host": "graylog", "levle": "info"}}}, False),
    ({"memcached_servers": "mc:11211"}, False),
    ({"listen": ""}, False),
    ({"basic_auth": ["w", "p"]}, False),
    ({"colour": "blue"}, True),  # an unknown key is a warning, not an error
]


@pytest.mark.parametrize("keys, valid", AGREEMENT)
def test_schema_and_parser_agree_on_shapes(validator: Draft202012Validator, tmp_path: Path,
                                           keys: dict[str, Any], valid: bool) -> None:
    document = {"storage_pairs": PAIRS, "basic_auth": "w:p", **keys}
    path = tmp_path / "stor.json"
    path.write_text(json.dumps(document))
    assert (schema_errors(validator, document) == []) is valid
    assert (check_config(str(path)).errors == ()) is valid
