"""The client's pure rules, without a network: backoff, Content-Range, the command line's values."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.cli.client import UsageError, parse_auth, parse_storage
from stor.client.download import parse_content_range
from stor.client.settings import Backoff


@given(failures=st.integers(1, 40), seed=st.integers(0, 2**32))
def test_backoff_grows_by_doubling_with_jitter_and_stays_under_the_cap(failures: int, seed: int) -> None:
    backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(seed))
    ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
    assert ceiling / 2 <= backoff.delay(failures) <= ceiling


@given(retry_after=st.floats(0, 1e6), seed=st.integers(0, 2**32))
def test_backoff_waits_for_retry_after_but_never_past_the_cap(retry_after: float, seed: int) -> None:
    delay = Backoff(base=0.5, cap=30.0, rng=random.Random(seed)).delay(1, retry_after)
    assert min(retry_after, 30.0) <= delay <= 30.0


@given(first=st.integers(0, 2**50), length=st.integers(1, 2**50), extra=st.integers(0, 2**20))
def test_content_range_as_servers_write_it(first: int, length: int, extra: int) -> None:
    last = first + length - 1
    size = last + 1 + extra
    assert parse_content_range(b"bytes %d-%d/%d" % (first, last, size)) == (first, last, size)


@pytest.mark.parametrize("value, expected", [
    (b"bytes 0-9/*", (0, 9, None)),
    (b"Bytes 5-5/6", (5, 5, 6)),
    (b"bytes 9-0/10", None),       # last before first
    (b"bytes 0-10/10", None),      # past the end
    (b"bytes */10", None),         # the 416 form
    (b"items 0-1/2", None),
    (b"bytes 0-x/2", None),
    (b"", None),
])
def test_content_range_that_cannot_continue_a_file_is_refused(value: bytes, expected: object) -> None:
    assert parse_content_range(value) == expected


@pytest.mark.parametrize("url, base, auth", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", None),
    ("https://stor.example/prefix/", "https://stor.example/prefix", None),
    ("http://writer:p%40ss@h:1/", "http://h:1", ("writer", "p@ss")),
])
def test_storage_url_loses_its_credentials_and_trailing_slash(url: str, base: str, auth: object) -> None:
    assert parse_storage(url) == (base, auth)


@pytest.mark.parametrize("url", ["ftp://h", "127.0.0.1:8080", "http://", "http://h/?q=1",
                                 "http://h:99999"])
def test_storage_url_that_is_not_an_http_base_is_a_usage_error(url: str) -> None:
    with pytest.raises(UsageError):
        parse_storage(url)


def test_auth_is_user_colon_password() -> None:
    assert parse_auth("writer:pa:ss") == ("writer", "pa:ss")
    for bad in ("writer", ":pass"):
        with pytest.raises(UsageError):
            parse_auth(bad)
