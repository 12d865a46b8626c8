"""The write-through keys (issue 12): s3_write_through, s3_region,
s3_outbox_concurrency, s3_outbox_max_backoff.  No reactor."""

from typing import Any

import pytest

from stor.config import Config, parse_config
from stor.core.errors import ConfigError
from stor.s3.read import NoS3, build_s3
from stor.core.metrics import NullMetrics
from stor.s3.outbox import build_outbox

CREDS = {"access_key": "AK", "secret_key": "SK", "host": "s3.example:9000"}


def parse(**keys: Any) -> Config:
    return parse_config({"storage_pairs": [["/mnt/a", "/mnt/b"]], "check_mounts": False, **keys})


def test_write_through_is_off_by_default():
    config = parse(s3_enabled=True, s3_credentials=CREDS)
    assert config.s3 is not None
    assert (config.s3.read_through, config.s3.write_through) == (True, False)
    assert (config.s3.region, config.s3.outbox_concurrency, config.s3.outbox_max_backoff) == (
        "us-east-1", 4, 30.0)


def test_write_through_alone_writes_but_does_not_read():
    config = parse(s3_write_through=True, s3_credentials=CREDS, s3_region="eu-central-1",
                   s3_outbox_concurrency=8, s3_outbox_max_backoff=5)
    assert config.s3 is not None
    assert (config.s3.read_through, config.s3.write_through) == (False, True)
    assert (config.s3.region, config.s3.outbox_concurrency, config.s3.outbox_max_backoff) == (
        "eu-central-1", 8, 5.0)
    assert isinstance(build_s3(config, None, NullMetrics()), NoS3)
    assert config.unknown_keys == ()


def test_no_outbox_without_write_through():
    assert build_outbox(parse(s3_enabled=True, s3_credentials=CREDS), None, None,
                        NullMetrics()) is None


@pytest.mark.parametrize("keys, key, words", [
    ({"s3_write_through": True}, "s3_credentials", "when s3_write_through is true"),
    ({"s3_write_through": True, "s3_credentials": {"access_key": "AK", "host": "h"}},
     "s3_credentials.secret_key", "when s3_write_through is true"),
    ({"s3_write_through": "yes", "s3_credentials": CREDS}, "s3_write_through", "true or false"),
    ({"s3_enabled": True, "s3_credentials": CREDS, "s3_region": "EU West"}, "s3_region",
     "not a region name"),
    ({"s3_enabled": True, "s3_credentials": CREDS, "s3_region": ""}, "s3_region",
     "non-empty string"),
    ({"s3_write_through": True, "s3_credentials": CREDS, "s3_outbox_concurrency": 0},
     "s3_outbox_concurrency", "from 1 to 256"),
    ({"s3_write_through": True, "s3_credentials": CREDS, "s3_outbox_concurrency": 2.5},
     "s3_outbox_concurrency", "from 1 to 256"),
    ({"s3_write_through": True, "s3_credentials": CREDS, "s3_outbox_max_backoff": 0},
     "s3_outbox_max_backoff", "greater than 0"),
    ({"s3_write_through": True, "s3_credentials": CREDS, "s3_outbox_max_backoff": "30"},
     "s3_outbox_max_backoff", "must be a number"),
])
def test_bad_write_through_keys_are_named(keys, key, words):
    with pytest.raises(ConfigError) as caught:
        parse(**keys)
    assert caught.value.key == key
    assert words in str(caught.value)
