"""copy_to_twin: a verified copy lands at its final path whole, or not at all."""

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stor.core import layout
from stor.core.errors import HashMismatch, MalformedSha
from stor.disk.locks import ShaLocks
from stor.disk.temps import is_stale_temp, temp_dir
from stor.disk.replica import CHUNK, CorruptSource, SourceGone, copy_to_twin, sha256_file
from support.helpers import sha256


_LOCK_DIR = tempfile.mkdtemp(prefix="stor-test-locks-")
atexit.register(shutil.rmtree, _LOCK_DIR, True)  # the module-wide lock files go with the run
LOCKS = ShaLocks(_LOCK_DIR)


def put(storage: Path, data: bytes, sha: str | None = None) -> Path:
    """Write ``data`` where stor keeps ``sha`` (default: its real hash) on ``storage``."""
    path = Path(layout.file_path(str(storage), sha or sha256(data)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def temps(storage: Path) -> list[str]:
    try:
        return os.listdir(temp_dir(str(storage)))
    except FileNotFoundError:
        return []


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    return a, b


def test_copies_to_the_final_path(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(3 * CHUNK + 17)
    source = put(a, data)
    os.utime(source, (1_000_000_000, 1_000_000_000))
    final = copy_to_twin(str(source), str(b), sha256(data), LOCKS)
    assert final == layout.file_path(str(b), sha256(data))
    assert Path(final).read_bytes() == data
    assert os.stat(final).st_mtime == 1_000_000_000  # same Last-Modified on both replicas
    assert temps(b) == []


def test_accepts_any_case_and_returns_the_upper_case_layout_path(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = b"hello\n"
    source = put(a, data)
    final = copy_to_twin(str(source), str(b), sha256(data).upper(), LOCKS)
    assert os.path.basename(final) == sha256(data).upper() + ".dat"


def test_empty_file(pair: tuple[Path, Path]) -> None:
    a, b = pair
    source = put(a, b"")
    assert Path(copy_to_twin(str(source), str(b), sha256(b""), LOCKS)).read_bytes() == b""


def test_refuses_a_source_that_does_not_hash_to_its_sha(pair: tuple[Path, Path]) -> None:
    a, b = pair
    good = b"the real content"
    source = put(a, b"rotten content!!", sha=sha256(good))
    with pytest.raises(CorruptSource) as info:
        copy_to_twin(str(source), str(b), sha256(good), LOCKS)
    assert isinstance(info.value, HashMismatch)
    assert info.value.path == str(source)
    assert info.value.expected == sha256(good)
    assert info.value.actual == sha256(b"rotten content!!")
    assert not os.path.exists(layout.file_path(str(b), sha256(good)))
    assert temps(b) == []


def test_a_refused_copy_leaves_an_existing_target_alone(pair: tuple[Path, Path]) -> None:
    a, b = pair
    good = b"the real content"
    source = put(a, b"rotten", sha=sha256(good))
    target = put(b, b"also rotten, but it is all we have", sha=sha256(good))
    with pytest.raises(CorruptSource):
        copy_to_twin(str(source), str(b), sha256(good), LOCKS)
    assert target.read_bytes() == b"also rotten, but it is all we have"


def test_replaces_a_corrupt_target(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(100_000)
    source = put(a, data)
    target = put(b, b"x" + data[1:], sha=sha256(data))
    copy_to_twin(str(source), str(b), sha256(data), LOCKS)
    assert target.read_bytes() == data


def test_a_failure_mid_copy_leaves_no_temp_and_no_final(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(3 * CHUNK)
    source = put(a, data)

    def fail(n: int) -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        copy_to_twin(str(source), str(b), sha256(data), LOCKS, on_chunk=fail)
    assert temps(b) == []
    assert not os.path.exists(layout.file_path(str(b), sha256(data)))


def test_never_creates_a_missing_twin_storage(tmp_path: Path) -> None:
    """An unmounted disk must not be silently recreated on the root filesystem."""
    a = tmp_path / "a"
    source = put(a, b"data")
    with pytest.raises(FileNotFoundError):
        copy_to_twin(str(source), str(tmp_path / "gone"), sha256(b"data"), LOCKS)
    assert not (tmp_path / "gone").exists()


def test_rejects_a_malformed_sha(pair: tuple[Path, Path]) -> None:
    a, b = pair
    source = put(a, b"data")
    with pytest.raises(MalformedSha):
        copy_to_twin(str(source), str(b), "not-a-sha", LOCKS)


def test_the_temp_file_is_owned_so_the_sweeper_keeps_it_while_copying(
        pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(2 * CHUNK)
    source = put(a, data)
    seen: list[tuple[str, bool]] = []

    def look(n: int) -> None:
        for name in temps(b):
            path = os.path.join(temp_dir(str(b)), name)
            seen.append((name, is_stale_temp(path, now=time.time() + 3600)))

    copy_to_twin(str(source), str(b), sha256(data), LOCKS, on_chunk=look)
    names = {name for name, _ in seen}
    assert len(names) == 1
    (name,) = names
    assert re.fullmatch(rf"{sha256(data)}\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", name)
    assert not any(stale for _, stale in seen)  # even an hour idle, a held temp is live


def test_a_source_deleted_while_copied_is_not_brought_back(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(2 * CHUNK)
    source = put(a, data)
    with pytest.raises(SourceGone):
        copy_to_twin(str(source), str(b), sha256(data), LOCKS,
                     on_chunk=lambda n: source.exists() and source.unlink())
    assert not os.path.exists(layout.file_path(str(b), sha256(data)))
    assert temps(b) == []


def test_on_chunk_sees_every_byte_in_chunks_of_at_most_a_mebibyte(pair: tuple[Path, Path]) -> None:
    a, b = pair
    data = os.urandom(2 * CHUNK + 5)
    source = put(a, data)
    sizes: list[int] = []
    copy_to_twin(str(source), str(b), sha256(data), LOCKS, on_chunk=sizes.append)
    assert sum(sizes) == len(data) and max(sizes) <= CHUNK


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_as_root_new_entries_belong_to_the_storage_owner(pair: tuple[Path, Path]) -> None:
    """scrub runs as root; the daemon (another user) must still write next to its copies."""
    a, b = pair
    os.chown(b, 65534, 65534)
    data = b"owned"
    final = copy_to_twin(str(put(a, data)), str(b), sha256(data), LOCKS)
    for path in (final, os.path.dirname(final), temp_dir(str(b)),
                 os.path.join(b, os.path.relpath(final, b).split(os.sep)[0])):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (65534, 65534), path


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(CHUNK + 1)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(str(tmp_path / "f")) == sha256(data)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64), flip=st.integers(0, 299))
def test_property_copy_is_exact_or_refused(data: bytes, chunk: int, flip: int) -> None:
    """Whatever the content and chunking: an intact source arrives byte for byte;
    a source with any byte changed is refused and leaves nothing behind."""
    with tempfile.TemporaryDirectory() as root:
        a, b = Path(root, "a"), Path(root, "b")
        b.mkdir()
        sha = sha256(data)
        final = copy_to_twin(str(put(a, data)), str(b), sha, LOCKS, chunk_size=chunk)
        assert Path(final).read_bytes() == data
        if data:
            i = flip % len(data)
            bad = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            os.unlink(final)
            with pytest.raises(CorruptSource):
                copy_to_twin(str(put(a, bad, sha=sha)), str(b), sha, LOCKS, chunk_size=chunk)
            assert not os.path.exists(final)
        assert temps(b) == []
