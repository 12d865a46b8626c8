"""The client's pure rules, without a network: backoff (and the retries' waits on a
``task.Clock``), Content-Range, the command line's values."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stor.cli.client import UsageError, parse_auth, parse_storage
from stor.client.download import parse_content_range
from stor.client.errors import ItemFailed
from stor.client.retry import with_retries
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


# -- retries on a task.Clock: the waits themselves, with no real time spent -------------


class Busy(ItemFailed):
    """A failure that may pass (a 503, a dropped connection)."""

    retryable = True

    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


class Attempts:
    """An attempt that fails with ``failures`` (in order), then succeeds; it counts calls."""

    def __init__(self, *failures: ItemFailed) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.progress = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "done"


def retrying(clock: Clock, backoff: Backoff, attempts: Attempts) -> "Deferred[str]":
    return Deferred.fromCoroutine(
        with_retries(clock, backoff, attempts, progress=lambda: attempts.progress))


def test_each_retry_waits_its_backoff_on_the_clock() -> None:
    clock, attempts = Clock(), Attempts(Busy(), Busy())
    done = retrying(clock, Backoff(retries=5, rng=random.Random(7)), attempts)
    same = Backoff(retries=5, rng=random.Random(7))  # the same jitter, drawn in the same order
    for failures, calls in ((1, 1), (2, 2)):
        wait = same.delay(failures)
        clock.advance(wait - 0.001)
        assert attempts.calls == calls and not done.called
        clock.advance(0.001)
        assert attempts.calls == calls + 1
    assert done.result == "done"


def test_retry_after_is_waited_for_though_the_backoff_is_shorter() -> None:
    clock, attempts = Clock(), Attempts(Busy(retry_after=10.0))
    done = retrying(clock, Backoff(retries=5, base=0.5, cap=30.0), attempts)
    clock.advance(9.999)
    assert attempts.calls == 1
    clock.advance(0.001)
    assert attempts.calls == 2 and done.result == "done"


def test_retries_used_up_fail_with_the_last_failure_and_no_call_left() -> None:
    clock, attempts = Clock(), Attempts(Busy(), Busy(), Busy(), Busy())
    done = retrying(clock, Backoff(retries=2, base=1.0, cap=1.0), attempts)
    clock.pump([1.0] * 5)
    assert attempts.calls == 3
    assert isinstance(done.result, Failure) and done.result.check(Busy)
    assert clock.getDelayedCalls() == []
    done.addErrback(lambda f: None)


def test_progress_resets_the_count_of_failures_in_a_row() -> None:
    clock = Clock()
    attempts = Attempts(Busy(), Busy(), Busy(), Busy())
    progressing = attempts.__call__

    async def attempt() -> str:
        try:
            return await progressing()
        finally:
            attempts.progress += 1  # every attempt brings more bytes

    done = Deferred.fromCoroutine(with_retries(
        clock, Backoff(retries=1, base=1.0, cap=1.0), attempt, progress=lambda: attempts.progress))
    clock.pump([1.0] * 5)
    assert attempts.calls == 5 and done.result == "done"  # 4 failures, but never 2 in a row
