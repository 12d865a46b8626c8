"""What the ``stor`` commands share about their command line: the usage error, the
config file and naming storages of it (``stor scrub``, ``stor s3-sync``)."""

import argparse
import os
from collections.abc import Sequence

from stor.config import Config, load_config
from stor.core.errors import ConfigError
from stor.disk.health import check_storages


class UsageError(Exception):
    """The command cannot run as asked: exit 2 with this message."""


def command_config(args: argparse.Namespace) -> Config:
    """The config named by ``--config`` or ``CONFIG_FILE``, validated."""
    path = args.config or os.environ.get("CONFIG_FILE")
    if not path:
        raise UsageError("no config file: give --config FILE or set CONFIG_FILE")
    try:
        return load_config(path)
    except ConfigError as e:
        raise UsageError(f"config error: {e}") from e


def selected_storages(config: Config, named: Sequence[str]) -> list[str]:
    """The storages to walk, spelled as in the config; every name must be one of them."""
    if not named:
        return list(config.storages)
    by_real = {os.path.realpath(s): s for s in config.storages}
    chosen: list[str] = []
    for name in named:
        storage = by_real.get(os.path.realpath(name))
        if storage is None:
            raise UsageError(f"{name} is not a storage in the config "
                             f"(storages: {', '.join(config.storages)})")
        if storage not in chosen:
            chosen.append(storage)
    return chosen


def check_listable(storages: Sequence[str]) -> None:
    """Refuse to start on a storage that cannot be listed: a dead disk is an error,
    not a disk without files.  Name the healthy storages to walk around it."""
    for health in check_storages(storages, check_mounts=False, with_free=False):
        storage, why = health.path, health.problem
        if why is None:
            try:
                with os.scandir(storage):
                    pass
            except OSError as e:
                why = f"cannot be listed: {e.strerror}"
        if why is not None:
            raise UsageError(f"storage {storage} {why}")


def positive_number(text: str, unit: str, number: str = "a number") -> float:
    """An argparse type's check: a positive, finite number of ``unit``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {number}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of {unit}, got {text}")
    return value


def positive_rate(text: str) -> float:
    """``--max-mbps``: a positive, finite number of MB/s."""
    return positive_number(text, "MB/s")
