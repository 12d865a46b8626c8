"""Collecting what is wrong with a config file, so one run reports all of it.

Every section parser takes a :class:`Problems` and records each error or
warning with the key it concerns (``statsite.port``, ``storage_pairs[1][0]``)
instead of raising at the first one.  :func:`stor.config.load_config` raises a
single :class:`~stor.core.errors.ConfigError` carrying every error once all
sections have been read; warnings travel with the :class:`~stor.config.Config`.
"""

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field

from stor.core.errors import Problem

__all__ = ["EXIT_CONFIG", "NO_CONFIG_FILE", "Problem", "Problems", "did_you_mean", "report_lines"]

EXIT_CONFIG = 2
"""The exit status of ``stor check-config`` and of start-up when the config cannot be used."""
NO_CONFIG_FILE = "no config file: give --config FILE or set CONFIG_FILE"
MAX_LISTED = 8
"""A message about an unknown key lists the known ones when there are at most this many."""


@dataclass
class Problems:
    """Errors (the file cannot be used) and warnings (it can, but look at this)."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.errors.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(key, message))

    def unknown_keys(self, where: str, given: Iterable[str], known: Iterable[str], *,
                     strict: bool, what: str) -> list[str]:
        """Record each key of ``given`` not in ``known``; return them, sorted.

        ``strict`` (a section only stor defines) makes each an error: a
        misspelt key there would silently switch a feature off.  Otherwise (the
        old service's sections, whose files carry extra keys) each is a
        warning.  Either way the message offers the nearest known key, or
        lists the known keys when there are few.
        """
        names = sorted(known)
        unknown = sorted(set(given) - set(names))
        for key in unknown:
            path = f"{where}.{key}" if where else key
            hint = did_you_mean(key, names) or (
                f" (known: {', '.join(names)})" if len(names) <= MAX_LISTED else "")
            if strict:
                self.error(path, f"is not {what}{hint}")
            else:
                self.warn(path, f"is not {what}: ignored{hint}")
        return unknown


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean "gelf"?)`` when a known key is close to ``key``, else ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def report_lines(errors: Iterable[Problem] = (), warnings: Iterable[Problem] = ()) -> list[str]:
    """One line per problem, as ``stor check-config`` and start-up print them."""
    return ([f"stor: config error: {p}" for p in errors]
            + [f"stor: config warning: {p}" for p in warnings])
