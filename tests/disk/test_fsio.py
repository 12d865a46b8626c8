"""Durable directory chains: what each upload's directories cost in fsyncs.

The fsyncs are counted by wrapping ``os.fsync`` (what the kernel is asked),
each attributed to the directory it was given.
"""

import os
from pathlib import Path

import pytest

from stor.disk.fsio import durable_dirs


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the directories fsynced from now on, in order."""
    calls: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_directories_another_process_made_cost_one_storage_fsync(tmp_path: Path,
                                                                 fsynced: list[str]) -> None:
    """The ``AA`` directories found there (a restart, another worker) are made
    durable by one fsync of the storage, not one each."""
    storage = tmp_path / "s1"
    for top in ("0A", "1B", "2C"):
        (storage / top).mkdir(parents=True)
    for top in ("0A", "1B", "2C"):
        durable_dirs(str(storage), str(storage / top / "00" / "11"))
    assert fsynced.count(str(storage)) == 1
    for top in ("0A", "1B", "2C"):  # each new directory's parent, once
        assert fsynced.count(str(storage / top)) == 1
        assert fsynced.count(str(storage / top / "00")) == 1


def test_a_top_directory_made_after_the_scan_is_fsynced_again(tmp_path: Path,
                                                              fsynced: list[str]) -> None:
    """Only what was there before the storage's fsync is taken as durable."""
    storage = tmp_path / "s1"
    (storage / "0A").mkdir(parents=True)
    durable_dirs(str(storage), str(storage / "0A" / "00"))
    (storage / "1B").mkdir()  # by someone else, after
    durable_dirs(str(storage), str(storage / "1B" / "00"))
    assert fsynced.count(str(storage)) == 2



@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_a_storage_chowned_by_the_operator_gives_new_entries_its_owner_within_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner is read again once :data:`~stor.disk.fsio.OWNER_TTL` has passed (a small
    upload asks four times; one ``stat`` a second does for all of them)."""
    from stor.disk import fsio

    storage = tmp_path / "s"
    storage.mkdir()
    os.chown(storage, 65534, 65534)
    now = [1000.0]
    monkeypatch.setattr(fsio.time, "monotonic", lambda: now[0])
    assert fsio.owner_of(str(storage)) == (65534, 65534)
    os.chown(storage, 65533, 65533)
    now[0] += fsio.OWNER_TTL + 0.01
    assert fsio.owner_of(str(storage)) == (65533, 65533)
    os.chown(storage, 0, os.getegid())
    now[0] += fsio.OWNER_TTL + 0.01
    assert fsio.owner_of(str(storage)) is None  # root's own storage: nothing to chown
