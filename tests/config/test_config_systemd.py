"""``TimeoutStopSec=`` read from a systemd unit as systemd reads it, and compared with
``shutdown_grace_period`` (``stor check-config --unit``).  No reactor, no systemd."""

import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.config.problems import Problems
from stor.config.systemd import DEFAULT_STOP_TIMEOUT, check_unit, stop_timeout, timespan

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, seconds", [
    ("45", 45.0), ("45s", 45.0), ("45 s", 45.0), ("1min 30s", 90.0), ("1min30s", 90.0),
    ("2h30m", 9000.0), ("1.5s", 1.5), ("500ms", 0.5), ("5 min", 300.0), ("1d", 86400.0),
    ("2 minutes 5 seconds", 125.0), ("infinity", math.inf), ("0", 0.0), ("45 30", 75.0),
    (".5s", 0.5), ("1m30", 90.0),
])
def test_time_spans(text: str, seconds: float) -> None:
    assert timespan(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "45x", "s", "1min thirty", "-5s", "1..5s", "1.s"])
def test_not_time_spans(text: str) -> None:
    assert timespan(text) is None


SAMPLES = ["45", "45s", "1min 30s", "1 min  30 s", "2h30m", "1.5s", "500ms", "10msec", "5 us",
           "45 30", "1m30", ".5s", "1d2h", "3M", "1y", "2 minutes 5 seconds", "0", "infinity",
           "45x", "1..5s", "1.s", "1min thirty", "s", "abc"]


def systemd_timespan(text: str) -> float | None:
    """What ``systemd-analyze timespan`` makes of ``text``: seconds, or None if it refuses it."""
    run = subprocess.run(["systemd-analyze", "timespan", text], capture_output=True, text=True,
                         timeout=30)
    if run.returncode != 0:
        return None
    usec = int(re.search(r"μs: (\d+)", run.stdout).group(1))  # type: ignore[union-attr]
    return math.inf if usec == 2**64 - 1 else usec / 1e6


@pytest.mark.acceptance('process')
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("text", SAMPLES)
def test_time_spans_are_read_as_systemd_reads_them(text: str) -> None:
    assert timespan(text) == pytest.approx(systemd_timespan(text))


@given(minutes=st.integers(0, 10_000), seconds=st.integers(0, 59))
def test_minutes_and_seconds_add_up(minutes: int, seconds: int) -> None:
    assert timespan(f"{minutes}min {seconds}s") == minutes * 60 + seconds
    assert timespan(f"{minutes}m{seconds}") == minutes * 60 + seconds


def unit(tmp_path: Path, text: str, *dropins: str) -> str:
    path = tmp_path / "stor.service"
    path.write_text(text)
    if dropins:
        (tmp_path / "stor.service.d").mkdir()
        for i, dropin in enumerate(dropins):
            (tmp_path / "stor.service.d" / f"{i:02d}-override.conf").write_text(dropin)
    return str(path)


def test_the_shipped_unit_waits_45_seconds() -> None:
    assert stop_timeout(str(REPO / "systemd" / "stor.service")).seconds == 45.0


def test_no_timeout_set_is_systemds_default(tmp_path: Path) -> None:
    found = stop_timeout(unit(tmp_path, "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n"))
    assert (found.seconds, found.source) == (DEFAULT_STOP_TIMEOUT, "systemd's default")


def test_only_the_service_section_counts(tmp_path: Path) -> None:
    path = unit(tmp_path, "[Unit]\nTimeoutStopSec=5\n[Service]\n#TimeoutStopSec=6\n"
                          "; TimeoutStopSec=7\n[Install]\nTimeoutStopSec=8\n")
    assert stop_timeout(path).seconds == DEFAULT_STOP_TIMEOUT


def test_the_last_assignment_wins_and_drop_ins_come_last(tmp_path: Path) -> None:
    path = unit(tmp_path, "[Service]\nTimeoutStopSec=45s\nTimeoutStopSec=50s\n",
                "[Service]\nTimeoutStopSec=1min\n", "[Service]\nTimeoutSec=2min\n")
    found = stop_timeout(path)
    assert found.seconds == 120.0
    assert found.source == f"{tmp_path}/stor.service.d/01-override.conf:2"


def test_an_empty_assignment_resets_to_the_default(tmp_path: Path) -> None:
    path = unit(tmp_path, "[Service]\nTimeoutStopSec=10s\n", "[Service]\nTimeoutStopSec=\n")
    assert stop_timeout(path).seconds == DEFAULT_STOP_TIMEOUT


@pytest.mark.parametrize("value", ["infinity", "0"])
def test_infinity_or_zero_waits_for_ever(tmp_path: Path, value: str) -> None:
    assert stop_timeout(unit(tmp_path, f"[Service]\nTimeoutStopSec={value}\n")).seconds == math.inf


def test_a_continued_line_is_joined(tmp_path: Path) -> None:
    path = unit(tmp_path, "[Service]\nTimeoutStopSec=1min \\\n 30s\n")
    assert stop_timeout(path).seconds == 90.0


def test_a_value_systemd_cannot_read_is_ignored_and_reported(tmp_path: Path) -> None:
    path = unit(tmp_path, "[Service]\nTimeoutStopSec=10s\nTimeoutStopSec=soon\n")
    found = stop_timeout(path)
    assert found.seconds == 10.0
    assert found.ignored == (f"{path}:3: TimeoutStopSec=soon",)


@pytest.mark.parametrize("grace, timeout, warned", [
    (30.0, "45s", False), (30.0, "30s", True), (30.0, "10s", True), (44.9, "45", False),
    (120.0, "infinity", False), (100.0, None, True), (60.0, None, False),
])
def test_a_grace_period_not_below_the_stop_timeout_is_a_warning(
        tmp_path: Path, grace: float, timeout: str | None, warned: bool) -> None:
    line = f"TimeoutStopSec={timeout}\n" if timeout is not None else ""
    problems = Problems()
    check_unit(unit(tmp_path, "[Service]\n" + line), grace, problems)
    assert problems.errors == []
    assert [w.key for w in problems.warnings] == (["shutdown_grace_period"] if warned else [])


def test_a_unit_that_cannot_be_read_is_an_error(tmp_path: Path) -> None:
    problems = Problems()
    check_unit(str(tmp_path / "nope.service"), 30.0, problems)
    assert [e.key for e in problems.errors] == ["--unit"]
    assert "nope.service" in problems.errors[0].message
