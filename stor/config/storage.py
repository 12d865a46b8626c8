"""The storage keys: which directories hold the files, which take new ones, how they are kept.

``storage_pairs``, ``writable_pairs_regex`` and ``cleanup_tempdir_period``
are the old service's keys with its meanings (docs/SPEC.md §2, §7);
``check_mounts``, ``balance_threshold``, ``lock_dir``, ``write_headroom``
(bytes a writable pair must have free on both members for the host to be
write-ready, docs/fleet-operations.rst) and ``read_hedge_after`` (seconds a
replica's read may stall before the twin is asked, docs/durability.rst) are stor's.
Storage directories need not exist when the file is read (``/status`` names a
missing one); one that exists and is not a directory, or one listed twice,
cannot be meant.
"""

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from stor.config import values
from stor.config.perl import describe, perl_number, perl_string
from stor.config.problems import Problems
from stor.core.placement import BALANCE_THRESHOLD, Pair

KEYS = frozenset({"storage_pairs", "writable_pairs_regex", "cleanup_tempdir_period",
                  "check_mounts", "balance_threshold", "lock_dir", "probe_period",
                  "write_headroom", "read_hedge_after"})
DEFAULT_CLEANUP_PERIOD = 1800.0
DEFAULT_PROBE_PERIOD = 10.0
"""Seconds between two probes of every storage (docs/security.rst: a create, a small write,
an fsync and an unlink per writable storage)."""
DEFAULT_READ_HEDGE_AFTER = 1.0
"""Seconds a replica's read may take before its twin is asked too (docs/durability.rst):
well above a healthy disk's worst seek under load, well below a client's patience."""
DEFAULT_WRITE_HEADROOM = 1024 ** 3
"""1 GiB: twice the old service's largest upload (500 MiB), so a write-ready host
can take any file it accepts, even with one more upload of that size in flight."""
ANY = re.compile(".*")


@dataclass(frozen=True)
class StorageConfig:
    """Where files live and which pairs take new ones."""

    storage_pairs: tuple[Pair, ...]
    writable_pairs_regex: re.Pattern[str] = ANY
    check_mounts: bool | None = None
    """None (absent): the old service's behaviour, docs/SPEC.md §2."""
    balance_threshold: int = BALANCE_THRESHOLD
    cleanup_tempdir_period: float = DEFAULT_CLEANUP_PERIOD
    lock_dir: str | None = None
    probe_period: float = DEFAULT_PROBE_PERIOD
    write_headroom: int = DEFAULT_WRITE_HEADROOM
    read_hedge_after: float = DEFAULT_READ_HEDGE_AFTER


def parse_storage(raw: Mapping[str, object], problems: Problems) -> StorageConfig:
    """The storage keys of ``raw``; whatever is wrong goes to ``problems``."""
    pairs = _storage_pairs(raw.get("storage_pairs"), problems)
    regex = _regex(raw.get("writable_pairs_regex"), problems)
    if pairs and regex is not None and not any(regex.search(s) for p in pairs for s in p):
        problems.warn("writable_pairs_regex", f"{regex.pattern!r} matches no storage: this host "
                                              "takes no new files (every upload gets 507)")
    check_mounts = raw.get("check_mounts")
    return StorageConfig(
        storage_pairs=pairs,
        writable_pairs_regex=regex or ANY,
        check_mounts=None if check_mounts is None else values.switch(raw, "check_mounts", True,
                                                                     problems),
        balance_threshold=values.whole(raw, "balance_threshold", BALANCE_THRESHOLD, problems,
                                       low=0),
        cleanup_tempdir_period=_period(raw.get("cleanup_tempdir_period"), problems),
        lock_dir=values.optional_string(raw, "lock_dir", problems),
        probe_period=values.number(raw, "probe_period", DEFAULT_PROBE_PERIOD, problems),
        write_headroom=values.whole(raw, "write_headroom", DEFAULT_WRITE_HEADROOM, problems,
                                    low=0),
        read_hedge_after=values.number(raw, "read_hedge_after", DEFAULT_READ_HEDGE_AFTER,
                                       problems),
    )


def _storage_pairs(value: object, problems: Problems) -> tuple[Pair, ...]:
    key = "storage_pairs"
    if not isinstance(value, list) or not value:
        missing = " (missing)" if value is None else f", got {describe(value)}"
        problems.error(key, f"must be a non-empty list of [dir, dir] pairs{missing}")
        return ()
    pairs: list[Pair] = []
    seen: set[str] = set()
    for i, pair in enumerate(value):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(p, str) and p for p in pair)):
            problems.error(f"{key}[{i}]", f"must be a list of two directory paths, got {describe(pair)}")
            continue
        for j, storage in enumerate(pair):
            real = os.path.realpath(storage)
            if os.path.exists(storage) and not os.path.isdir(storage):
                problems.error(f"{key}[{i}][{j}]", f"{storage} exists and is not a directory")
            elif real in seen:
                problems.error(f"{key}[{i}][{j}]", f"{storage} is listed more than once")
            seen.add(real)
        pairs.append((pair[0], pair[1]))
    return tuple(pairs)


def _regex(value: object, problems: Problems) -> re.Pattern[str] | None:
    """A Perl regex (the old service matched ``$storage =~ /$regex/``); ``null`` is ``.*``.

    Python's ``re`` reads the patterns such files hold (classes, anchors,
    alternatives) the same way; one it cannot compile is an error.
    """
    key = "writable_pairs_regex"
    if value is None:
        return ANY
    text = perl_string(value)  # a number is a pattern in Perl too
    if text is None:
        problems.error(key, f"must be a regular expression string, got {describe(value)}")
        return None
    try:
        return re.compile(text)
    except re.error as e:
        problems.error(key, f"{text!r} is not a valid regular expression: {e}")
        return None


def _period(value: object, problems: Problems) -> float:
    """Seconds, as Perl read them: ``1800`` or ``"1800"``; ``null`` or absent is 1800."""
    key = "cleanup_tempdir_period"
    if value is None:
        return DEFAULT_CLEANUP_PERIOD
    seconds = perl_number(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        problems.error(key, f"must be a number of seconds greater than 0, got {describe(value)}")
        return DEFAULT_CLEANUP_PERIOD
    return seconds
