"""Checks of the bench's own logic (not of stor): ``.venv/bin/python -m pytest bench/``.

What the report rests on: the order of the rounds alternates, the figure is
the median of the paired ratios, noise is flagged, a failed row does not stop
the others, and the POST ceiling really stores a durable, correct copy.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ceilings import durable_two_replicas, sha256_pass  # noqa: E402
from harness import BenchError, SetAside, ToolMissing, parse_size, stor_relative_path  # noqa: E402
from rounds import Measure, Row, raise_failures, run_rounds, summary  # noqa: E402
from rows import InterleavedUploads  # noqa: E402


def scripted_row(name: str, subject: list[float], reference: list[float],
                 calls: list[str], goal: float | None = 0.9) -> Row:
    """A row whose two sides return the given values in turn and log each call."""
    def side(label: str, values: list[float]):  # type: ignore[no-untyped-def]
        def measure() -> Measure:
            calls.append(f"{name}:{label}")
            return Measure(values.pop(0))
        return measure

    return Row(name, "MB/s", "stor", "ceiling", goal, side("s", subject), side("r", reference))


def test_sides_alternate_between_rounds_and_rows() -> None:
    calls: list[str] = []
    rows = [scripted_row("a", [1, 1, 1], [1, 1, 1], calls),
            scripted_row("b", [1, 1, 1], [1, 1, 1], calls)]
    run_rounds(rows, 3, out=lambda line: None)
    assert calls == ["a:s", "a:r", "b:r", "b:s",
                     "a:r", "a:s", "b:s", "b:r",
                     "a:s", "a:r", "b:r", "b:s"]


def test_figure_is_the_median_of_paired_ratios_not_a_ratio_of_medians() -> None:
    # paired ratios 0.9, 1.0, 0.5 -> median 0.9; the ratio of the sides' medians
    # (100 / 200) would say 0.5
    row = scripted_row("a", [90, 200, 100], [100, 200, 200], [])
    run_rounds([row], 3, out=lambda line: None)
    assert row.ratios == [0.9, 1.0, 0.5]
    assert row.ratio == 0.9
    assert row.spread == 2.0
    assert row.noisy
    assert row.verdict() == "ok (noisy)"


def test_a_steady_row_below_its_goal_is_a_miss_and_not_noisy() -> None:
    row = scripted_row("a", [80, 81, 79], [100, 100, 100], [])
    run_rounds([row], 3, out=lambda line: None)
    assert not row.noisy
    assert row.verdict() == "MISS"


def test_a_failing_row_is_reported_and_the_others_still_run() -> None:
    calls: list[str] = []
    good = scripted_row("good", [1, 1], [1, 1], calls)

    def broken() -> Measure:
        raise BenchError("the server went away")

    bad = Row("bad", "MB/s", "stor", "ceiling", 0.9, broken, broken)
    lines: list[str] = []
    run_rounds([bad, good], 2, out=lines.append)
    assert len(good.rounds) == 2
    assert any("bad" in line and "FAILED: the server went away" in line for line in lines)
    summary([bad, good], out=lines.append)
    assert any(line.startswith("bad") and "FAILED" in line for line in lines)
    with pytest.raises(BenchError, match="the server went away"):
        raise_failures([bad, good])


class ScriptedUploads:
    """One side of an interleaved row: each upload takes the next given time."""

    def __init__(self, label: str, times: list[float], calls: list[str]) -> None:
        self.label, self.times, self.calls = label, times, calls

    def begin(self) -> None:
        self.calls.append(f"{self.label}:begin")

    def one(self) -> tuple[float, list[str]]:
        self.calls.append(self.label)
        return self.times.pop(0), []

    def end(self, seconds: float) -> str:
        return f"{self.label} {seconds:.1f} s"


def test_interleaved_uploads_take_turns_file_by_file_and_measure_once_per_round() -> None:
    calls: list[str] = []
    both = InterleavedUploads(3, 1_000_000, ScriptedUploads("s", [1, 1, 1, 2, 2, 2], calls),
                              ScriptedUploads("r", [0.5, 0.5, 0.5, 4, 4, 4], calls))
    row = Row("p", "MB/s", "stor", "ceiling", 0.9, both.subject, both.reference)
    run_rounds([row], 2, out=lambda line: None)
    uploads = [c for c in calls if ":" not in c]
    assert uploads == ["s", "r", "r", "s", "s", "r",   # round 1: the subject first
                       "r", "s", "s", "r", "r", "s"]   # round 2: the reference first
    assert calls.count("s:begin") == calls.count("r:begin") == 2
    assert [r.subject.value for r in row.rounds] == [1.0, 0.5]     # 3 MB in 3 s, in 6 s
    assert [r.reference.value for r in row.rounds] == [2.0, 0.25]  # 3 MB in 1.5 s, in 12 s
    assert row.rounds[0].subject.detail == "s 3.0 s"


def test_only_missing_tools_make_a_tool_missing_failure() -> None:
    def missing() -> Measure:
        raise ToolMissing("no wrk")

    row = Row("get", "req/s", "stor", "web", 1.2, missing, missing)
    run_rounds([row], 1, out=lambda line: None)
    with pytest.raises(ToolMissing):
        raise_failures([row])


def test_the_ceiling_stores_both_copies_in_stor_layout(tmp_path: Path) -> None:
    storages = (tmp_path / "a", tmp_path / "b")
    for storage in storages:
        storage.mkdir()
    body = os.urandom(100_000)
    sha = hashlib.sha256(body).hexdigest()
    finals = durable_two_replicas(sha, [body[:50_000], body[50_000:]], storages)
    assert finals == [storage / stor_relative_path(sha) for storage in storages]
    assert all(path.read_bytes() == body for path in finals)
    assert all(not any((storage / ".bench-tmp").iterdir()) for storage in storages)


def test_the_ceiling_refuses_a_body_that_does_not_match(tmp_path: Path) -> None:
    storages = (tmp_path / "a", tmp_path / "b")
    for storage in storages:
        storage.mkdir()
    with pytest.raises(BenchError, match="does not hash"):
        durable_two_replicas("0" * 64, [b"not that"], storages)
    assert not any(path.suffix == ".dat" for path in tmp_path.rglob("*"))


def test_sha256_pass_hashes_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    assert sha256_pass(path)[1] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("text,size", [("4096", 4096), ("4KiB", 4096), ("256MiB", 256 << 20),
                                       ("4GiB", 4 << 30), ("1.5M", 3 << 19), ("64m", 64 << 20)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1MiB", "4TB", "lots"])
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_small_copies_stay_until_more_than_the_most_is_kept(tmp_path: Path) -> None:
    """Kept, not deleted between measurements (no burst of freshly deleted inodes
    for the next creates to search past), and removed once there are too many."""
    kept = SetAside(most=3 * 4096)
    files = []
    for i in range(4):
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x" * 4096)
        files.append(path)
    kept.put_away(files[:3], 4096)
    assert all(f.exists() for f in files)
    kept.put_away(files[3:], 4096)
    assert not any(f.exists() for f in files)


def test_large_copies_go_at_once(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"x")
    SetAside().put_away([path], SetAside.SMALL + 1)
    assert not path.exists()
