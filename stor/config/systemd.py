"""How long systemd waits for stor to stop: ``TimeoutStopSec=`` of its unit (and drop-ins).

``stor check-config --unit FILE`` compares it with ``shutdown_grace_period``:
a grace period at or above the stop timeout means systemd kills stor
(SIGKILL) while it is still letting requests finish, which cuts them anyway
and skips the clean exit.

Read as systemd reads it (systemd.service(5), systemd.time(7)): the
``[Service]`` section of the unit, then of each ``<unit>.d/*.conf`` drop-in
in name order; the last assignment wins, ``TimeoutSec=`` sets the stop
timeout too, an empty value resets it to the default (90 s,
``DefaultTimeoutStopSec=``), and ``infinity`` (or 0) means no timeout.
"""

import math
import os
import re
from dataclasses import dataclass

from stor.config.problems import Problems

DEFAULT_STOP_TIMEOUT = 90.0

_UNITS = {
    "us": 1e-6, "usec": 1e-6, "µs": 1e-6, "μs": 1e-6,
    "ms": 1e-3, "msec": 1e-3,
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
    "w": 604800.0, "week": 604800.0, "weeks": 604800.0,
    "M": 2629800.0, "month": 2629800.0, "months": 2629800.0,
    "y": 31557600.0, "year": 31557600.0, "years": 31557600.0,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*([^\d\s.]*)")


@dataclass(frozen=True)
class StopTimeout:
    """The stop timeout a unit gives, where it was set, and what systemd would not read."""

    seconds: float
    """``math.inf`` for ``infinity`` (or 0): systemd waits for ever."""
    source: str
    """``path:line`` of the assignment that counts, or ``systemd's default``."""
    ignored: tuple[str, ...] = ()
    """``path:line: value`` of assignments systemd would ignore (not a time span)."""


def timespan(text: str) -> float | None:
    """A systemd time span (``45``, ``45s``, ``1min 30s``, ``2h30m``, ``infinity``) in seconds; None if not one."""
    text = text.strip()
    if text == "infinity":
        return math.inf
    total, end = 0.0, 0
    for match in _PART.finditer(text):
        if match.start() != end:
            return None
        unit = match.group(2) or "s"
        if unit not in _UNITS:
            return None
        total += float(match.group(1)) * _UNITS[unit]
        end = match.end()
    if end == 0 or text[end:].strip():
        return None
    return total


def stop_timeout(unit_path: str) -> StopTimeout:
    """The unit's stop timeout; OSError if the unit file cannot be read."""
    seconds, source, ignored = DEFAULT_STOP_TIMEOUT, "systemd's default", []
    for path in [unit_path, *_dropins(unit_path)]:
        for line_no, name, value in _service_assignments(path):
            if name not in ("TimeoutStopSec", "TimeoutSec"):
                continue
            where = f"{path}:{line_no}"
            if not value:
                seconds, source = DEFAULT_STOP_TIMEOUT, f"{where} (reset to the default)"
                continue
            parsed = timespan(value)
            if parsed is None:
                ignored.append(f"{where}: {name}={value}")
                continue
            seconds, source = (math.inf if parsed == 0 else parsed), where
    return StopTimeout(seconds, source, tuple(ignored))


def _dropins(unit_path: str) -> list[str]:
    directory = unit_path + ".d"
    if not os.path.isdir(directory):
        return []
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory)) if n.endswith(".conf")]


def _service_assignments(path: str) -> list[tuple[int, str, str]]:
    """(line number, name, value) of each assignment in the ``[Service]`` section of ``path``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    found: list[tuple[int, str, str]] = []
    section = ""
    logical, first = "", 0
    for number, raw in enumerate(lines, start=1):
        if not logical:
            first = number
            if raw.lstrip().startswith(("#", ";")):
                continue
        if raw.endswith("\\"):  # a continued line: systemd joins it with a space
            logical += raw[:-1] + " "
            continue
        line = (logical + raw).strip()
        logical = ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            name, _, value = line.partition("=")
            found.append((first, name.strip(), value.strip()))
    return found


def unit_user(unit_path: str) -> str | None:
    """The ``User=`` the unit (and its drop-ins, read after it) runs the service as; None
    when it names none (root) or cannot be read (:func:`check_unit` says so) — the last
    assignment wins, as in systemd."""
    found = None
    for path in [unit_path, *_dropins(unit_path)]:
        try:
            assignments = _service_assignments(path)
        except OSError:
            return None
        for _, name, value in assignments:
            if name == "User":
                found = value or None
    return found


def check_unit(unit_path: str, grace: float | None, problems: Problems) -> None:
    """Record what is wrong between the unit at ``unit_path`` and a ``shutdown_grace_period``.

    ``grace`` is None when the config could not be read (only the unit is
    checked then).
    """
    try:
        timeout = stop_timeout(unit_path)
    except OSError as e:
        problems.error("--unit", f"cannot read {unit_path}: {e.strerror}")
        return
    for where in timeout.ignored:
        problems.warn("--unit", f"{where} is not a time span: systemd ignores it")
    if grace is not None and grace >= timeout.seconds:
        problems.warn("shutdown_grace_period",
                      f"{grace:g} s is not below TimeoutStopSec ({timeout.seconds:g} s, "
                      f"{timeout.source}): systemd would kill stor (SIGKILL) before the "
                      "requests in flight finish; give TimeoutStopSec a few seconds more")
