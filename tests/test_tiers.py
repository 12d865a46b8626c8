"""The tiers plugin (tests/support/tiers.py) on a small suite of its own: it fails a
test in the wrong tier, so the markers cannot drift from what the tests do."""

import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SUITE = '''
import subprocess
import time

import pytest


def test_fast_and_pure():
    assert True


def test_fast_but_starts_a_process():
    subprocess.run(["true"], check=True)


@pytest.mark.acceptance("process")
def test_declares_what_it_uses():
    subprocess.run(["true"], check=True)


@pytest.mark.acceptance("process")
def test_declares_a_need_it_never_uses():
    assert True


@pytest.mark.acceptance("process")
def test_uses_what_it_does_not_declare():
    subprocess.run(["true"], check=True)
    subprocess.run(["memcached", "--version"], check=True, capture_output=True)


def test_fast_but_sleeps_for_seconds():
    time.sleep(30)  # refused at once: the test fails without waiting
'''


@pytest.mark.acceptance("process")
def test_each_test_is_held_to_its_tier(pytester: pytest.Pytester,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.delenv("STOR_TIERS_RECORD", raising=False)
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "support.tiers", "-p", "no:cacheprovider",
                                           "-rf", timeout=120)
    failed = [m.group(1) for line in result.outlines
              if (m := re.match(r"FAILED test_suite\.py::(\w+)", line))]
    result.assert_outcomes(passed=2, failed=4)
    assert sorted(failed) == [
        "test_declares_a_need_it_never_uses",
        "test_fast_but_sleeps_for_seconds",
        "test_fast_but_starts_a_process",
        "test_uses_what_it_does_not_declare",
    ], result.stdout.str()
    text = result.stdout.str()
    assert ("test_fast_but_starts_a_process: a fast test uses ['process']: mark it "
            "@pytest.mark.acceptance('process')") in text
    assert "a fast test waits 30 s of real time (time.sleep)" in text
    assert "an acceptance test that used none of what it declares ['process']" in text
    assert "uses ['memcached'] without declaring it (declares ['process'])" in text


@pytest.mark.acceptance("process")
def test_an_unknown_need_is_a_usage_error(pytester: pytest.Pytester,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    pytester.makepyfile(test_suite='''
import pytest

@pytest.mark.acceptance("a-mainframe")
def test_it():
    pass
''')
    result = pytester.runpytest_subprocess("-p", "support.tiers", "-p", "no:cacheprovider",
                                           timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "acceptance needs must be among" in result.stderr.str() + result.stdout.str()
