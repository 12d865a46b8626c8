"""Collecting what is wrong with a config file, so one run reports all of it.

Every section parser takes a :class:`Problems` and records each error or
warning with the key it concerns (``statsite.port``, ``storage_pairs[1][0]``)
instead of raising at the first one.  :func:`stor.config.load_config` raises a
single :class:`~stor.core.errors.ConfigError` carrying every error once all
sections have been read; warnings travel with the :class:`~stor.config.Config`.
"""

from dataclasses import dataclass, field

from stor.core.errors import Problem

__all__ = ["Problem", "Problems"]


@dataclass
class Problems:
    """Errors (the file cannot be used) and warnings (it can, but look at this)."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.errors.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(key, message))
