"""Typed values of the config file, each bad one recorded as a problem naming its key.

stor's own keys are strict: a number is a JSON number (not ``"30"``), a
switch is ``true``/``false``.  The old service's keys are read by the
helpers of :mod:`stor.config.perl` instead, as Perl read them.  A ``null``
value means the same as an absent key everywhere (Perl's ``//`` did so for
the old keys; stor's keys follow).
"""

import math
from collections.abc import Mapping

from stor.config.perl import describe
from stor.config.problems import Problems


def number(raw: Mapping[str, object], key: str, default: float, problems: Problems, *,
           above: float | None = 0.0, at_least: float | None = None, unit: str = "seconds") -> float:
    """A finite JSON number, greater than ``above`` (or at least ``at_least``)."""
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.error(key, f"must be a number of {unit}, got {describe(value)}")
        return default
    if above is not None and value <= above:
        problems.error(key, f"must be a number of {unit} greater than {above:g}, got {describe(value)}")
        return default
    if at_least is not None and value < at_least:
        problems.error(key, f"must be a number of {unit} >= {at_least:g}, got {describe(value)}")
        return default
    return float(value)


def whole(raw: Mapping[str, object], key: str, default: int, problems: Problems, *,
          low: int, high: int | None = None, unit: str = "bytes") -> int:
    """A whole JSON number from ``low`` to ``high`` (no upper bound when None)."""
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if (isinstance(value, bool) or not isinstance(value, int) or value < low
            or (high is not None and value > high)):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        problems.error(key, f"must be a whole number of {unit} {bounds}, got {describe(value)}")
        return default
    return value


def optional_whole(raw: Mapping[str, object], key: str, problems: Problems, *,
                   low: int, unit: str = "bytes") -> int | None:
    """Like :func:`whole`, None when absent."""
    if raw.get(key) is None:
        return None
    return whole(raw, key, low, problems, low=low, unit=unit)


def switch(raw: Mapping[str, object], key: str, default: bool, problems: Problems) -> bool:
    """``true`` or ``false``, nothing else (stor's keys)."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        problems.error(key, f"must be true or false, got {describe(value)}")
        return default
    return value


def string(raw: Mapping[str, object], key: str, default: str, problems: Problems) -> str:
    """A non-empty JSON string."""
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        problems.error(key, f"must be a non-empty string, got {describe(value)}")
        return default
    return value


def optional_string(raw: Mapping[str, object], key: str, problems: Problems) -> str | None:
    """Like :func:`string`, None when absent."""
    if raw.get(key) is None:
        return None
    return string(raw, key, "", problems) or None


def choice(raw: Mapping[str, object], key: str, choices: tuple[str, ...],
           problems: Problems) -> str:
    """One of ``choices`` (the first is the default)."""
    value = raw.get(key)
    if value is None:
        return choices[0]
    if value not in choices:
        problems.error(key, f"must be {' or '.join(describe(c) for c in choices)}, "
                            f"got {describe(value)}")
        return choices[0]
    return str(value)
