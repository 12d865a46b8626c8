"""Collecting what is wrong with a config file, so one run reports all of it.

Every section parser takes a :class:`Problems` and records each error or
warning with the key it concerns (``statsite.port``, ``storage_pairs[1][0]``)
instead of raising at the first one.  :func:`stor.config.load_config` raises a
single :class:`~stor.core.errors.ConfigError` carrying every error once all
sections have been read; warnings travel with the :class:`~stor.config.Config`.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One finding about one key; ``key`` is empty for the file as a whole."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


@dataclass
class Problems:
    """Errors (the file cannot be used) and warnings (it can, but look at this)."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, key: str, message: str) -> None:
        self.errors.append(Problem(key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(Problem(key, message))
