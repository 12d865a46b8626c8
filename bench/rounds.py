"""Paired, alternating rounds and the report they end in.

On a shared machine a ceiling measured once is noise: the same disk moves 2×
from one run to the next.  So every row is measured in rounds, each round
measuring the subject (stor, or the new build) and its reference (the
ceiling, or the old build) back to back, the one going first alternating from
round to round; the row's figure is the **median of the per-round ratios**,
and the spread of those ratios (max / min) says whether the machine was quiet
enough to judge.  Rows take turns inside a round, so a burst of load elsewhere
hits several rows a little rather than one row a lot.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from harness import BenchError, ToolMissing

NOISY_SPREAD = 1.20


@dataclass
class Measure:
    """One measurement: a rate (higher is better) and what else is worth printing."""

    value: float
    detail: str = ""


@dataclass
class RoundResult:
    """One round of one row."""

    subject: Measure
    reference: Measure
    subject_first: bool

    @property
    def ratio(self) -> float:
        """subject / reference; 0 when the reference measured nothing."""
        return self.subject.value / self.reference.value if self.reference.value else 0.0


@dataclass
class Row:
    """One line of the report: what is measured, against what, and the goal.

    ``subject`` and ``reference`` are called once per round and return a
    :class:`Measure` in ``unit`` (higher is better).  ``goal`` is the least
    acceptable median ratio, or None when the issue sets none (the ratio is
    still reported).
    """

    name: str
    unit: str
    subject_label: str
    reference_label: str
    goal: float | None
    subject: Callable[[], Measure]
    reference: Callable[[], Measure]
    rounds: list[RoundResult] = field(default_factory=list)
    after_round: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)
    failure: BenchError | None = None

    @property
    def ratios(self) -> list[float]:
        """Every round's ratio, in round order."""
        return [r.ratio for r in self.rounds]

    @property
    def ratio(self) -> float:
        """The row's figure: the median of the paired ratios."""
        return statistics.median(self.ratios)

    @property
    def spread(self) -> float:
        """max / min of the ratios: 1.0 is perfectly steady."""
        low = min(self.ratios)
        return max(self.ratios) / low if low > 0 else float("inf")

    @property
    def noisy(self) -> bool:
        """The ratios spread over 20 %: too noisy to judge the goal."""
        return self.spread > NOISY_SPREAD

    def verdict(self) -> str:
        """``ok``/``MISS`` against the goal, ``-`` without one; ``(noisy)`` when it is."""
        text = "-" if self.goal is None else ("ok" if self.ratio >= self.goal else "MISS")
        return f"{text} (noisy)" if self.noisy else text


def fmt_value(value: float, unit: str) -> str:
    """A rate with its unit, to a sensible precision."""
    digits = 1 if value < 100 else 0
    return f"{value:,.{digits}f} {unit}"


def run_rounds(rows: Sequence[Row], count: int, out: Callable[[str], None] = print) -> None:
    """Measure every row ``count`` times, alternating which side goes first.

    Round ``r`` of row ``i`` measures the subject first when ``r + i`` is
    even, so consecutive rows in a round also start from different sides.
    Each round's line is printed as soon as it is measured.
    """
    for number in range(count):
        out(f"round {number + 1}/{count}")
        for index, row in enumerate(rows):
            if row.failure is not None:
                continue
            try:
                result = _one_round(row, (number + index) % 2 == 0)
            except BenchError as exc:
                row.failure = exc
                out(f"  {row.name:<24} FAILED: {str(exc).splitlines()[0]}")
                continue
            out(_round_line(row, result))


def _one_round(row: Row, subject_first: bool) -> RoundResult:
    if subject_first:
        subject = row.subject()
        reference = row.reference()
    else:
        reference = row.reference()
        subject = row.subject()
    result = RoundResult(subject, reference, subject_first)
    row.rounds.append(result)
    if row.after_round is not None:
        row.after_round()
    return result


def failed_row(name: str, failure: BenchError) -> Row:
    """A row whose setup failed: reported as such while the other rows run."""
    def never() -> Measure:
        raise failure

    return Row(name, "", "", "", None, never, never, failure=failure)


def raise_failures(rows: Sequence[Row]) -> None:
    """After the report: fail the run if any row failed (ToolMissing if all were missing tools)."""
    failures = [row.failure for row in rows if row.failure is not None]
    if not failures:
        return
    kind = ToolMissing if all(isinstance(f, ToolMissing) for f in failures) else BenchError
    raise kind("\n\n".join(f"{row.name}: {row.failure}" for row in rows
                            if row.failure is not None))


def _round_line(row: Row, result: RoundResult) -> str:
    first = row.subject_label if result.subject_first else row.reference_label
    line = (f"  {row.name:<24} {row.subject_label} {fmt_value(result.subject.value, row.unit)}"
            f"  {row.reference_label} {fmt_value(result.reference.value, row.unit)}"
            f"  ratio {result.ratio:.3f}  ({first} first)")
    details = [d for d in (result.subject.detail, result.reference.detail) if d]
    if details:
        line += f"\n  {'':<24} ({'; '.join(details)})"
    return line


def print_table(rows: Sequence[Sequence[str]], out: Callable[[str], None] = print) -> None:
    """Print rows with each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows if i < len(row))
              for i in range(max(map(len, rows)))]
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell
                 for i, cell in enumerate(row)]
        out("  ".join(cells).rstrip())


def summary(rows: Sequence[Row], out: Callable[[str], None] = print) -> None:
    """The report: per row the medians, the median ratio, goal, verdict and spread."""
    table = [["row", "subject (median)", "reference (median)", "ratio", "goal", "verdict",
              "spread"]]
    for row in rows:
        if row.failure is not None:
            table.append([row.name, "FAILED", "", "", "" if row.goal is None else
                          f">= {row.goal:.2f}", "FAILED", ""])
            continue
        if not row.rounds:
            continue
        subject = statistics.median(r.subject.value for r in row.rounds)
        reference = statistics.median(r.reference.value for r in row.rounds)
        goal = "none set" if row.goal is None else f">= {row.goal:.2f}"
        table.append([
            row.name, f"{row.subject_label} {fmt_value(subject, row.unit)}",
            f"{row.reference_label} {fmt_value(reference, row.unit)}",
            f"{row.ratio:.3f}", goal, row.verdict(), f"{row.spread:.2f}",
        ])
    print_table(table, out)
    noisy = [row.name for row in rows if row.rounds and row.noisy]
    if noisy:
        out(f"\nnote: too noisy to judge {', '.join(noisy)}: the paired ratios spread over "
            f"{(NOISY_SPREAD - 1) * 100:.0f} % (max/min); rerun on a quieter machine or with "
            "more --rounds.")
    for row in rows:
        for note in row.notes:
            out(f"note: {row.name}: {note}")
        if row.failure is not None:
            out(f"FAILED: {row.name}: {str(row.failure).splitlines()[0]} (details below)")


def warn(text: str) -> None:
    """A line on stderr, for what the reader must not miss but is not a result."""
    print(f"warning: {text}", file=sys.stderr, flush=True)
