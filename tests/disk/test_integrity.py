"""What a 2xx promises, under concurrency and faults (issue: never acknowledge what is
not stored).  stor runs as real processes (one and two workers); members fail for
real: a regular file where a directory must go, a small full tmpfs, a storage left
on the root filesystem by a disk that did not mount.
"""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.crashcheck import resolved_paths
from support.helpers import dat_files
from support.fleet import s3_keys
from support.harness import AUTH_HEADER, request
from stor.core import layout
from support.helpers import flip, sha256

pytestmark = pytest.mark.acceptance('fault', 'moto', 'process', 'stor-process')

MiB = 1024 * 1024


def post(port: int, data: bytes, sha: str | None = None) -> tuple[int, bytes]:
    answer = request(port, "POST", f"/{sha or sha256(data)}", data,
                     {"Authorization": AUTH_HEADER}, timeout=60)
    return answer.status, answer.body


def parallel_posts(port: int, data: bytes, n: int = 20) -> list[tuple[int, bytes]]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: post(port, data), range(n)))


def holders(storages: list[str], sha: str) -> list[str]:
    return [s for s in storages if os.path.isfile(layout.file_path(s, sha))]


def block_every_aa(storage: str) -> None:
    """A regular file wherever an ``AA`` directory would go: every commit there fails."""
    for n in range(256):
        Path(storage, f"{n:02X}").write_text("in the way")


def pairs_of(tmp_path: Path, name: str, count: int = 2) -> list[list[str]]:
    pairs = []
    for p in range(count):
        pair = []
        for m in range(2):
            d = tmp_path / name / f"d{p}{m}"
            d.mkdir(parents=True)
            pair.append(str(d))
        pairs.append(pair)
    return pairs


# -- 1, 2: parallel identical uploads -----------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_identical_uploads_store_one_pair_and_every_answer_is_true(
        stor_process, tmp_path, workers):
    pairs = pairs_of(tmp_path, "healthy")
    stor = stor_process(["--workers", str(workers)], storage_pairs=pairs)
    storages = [s for p in pairs for s in p]
    for round_ in range(20):
        data = os.urandom(256 * 1024) + bytes([round_])
        answers = parallel_posts(stor.port, data)
        codes = sorted(code for code, _ in answers)
        assert set(codes) <= {200, 201}, codes
        assert codes.count(201) == 1, codes  # one stored it; the others found it stored
        held = holders(storages, sha256(data))
        assert len(held) == 2 and held in pairs, held  # exactly one pair
        for _, body in answers:
            for path in json.loads(body):
                assert Path(path).read_bytes() == data
    assert not any(n for s in storages if Path(s, ".stor-tmp").exists()
                   for n in os.listdir(Path(s, ".stor-tmp")) if not n.startswith(".probe."))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_second_member_never_gets_a_2xx_for_a_file_stored_nowhere(
        stor_process, tmp_path, workers):
    pairs = pairs_of(tmp_path, "faulty")
    block_every_aa(pairs[0][1])
    stor = stor_process(["--workers", str(workers)], storage_pairs=pairs)
    for round_ in range(10):
        data = os.urandom(MiB) + bytes([round_])
        answers = parallel_posts(stor.port, data)
        assert {code for code, _ in answers} <= {200, 201}  # the good pair took it
        got = request(stor.port, "GET", f"/{sha256(data)}")
        assert got.status == 200 and got.body == data
        assert holders(pairs[0] + pairs[1], sha256(data)) == pairs[1]
        for _, body in answers:
            assert all(Path(p).read_bytes() == data for p in json.loads(body))


def test_with_no_pair_that_can_take_it_nothing_is_acknowledged(stor_process, tmp_path):
    pairs = pairs_of(tmp_path, "broken", count=1)
    block_every_aa(pairs[0][1])
    stor = stor_process(storage_pairs=pairs)
    data = os.urandom(MiB)
    answers = parallel_posts(stor.port, data)
    assert {code for code, _ in answers} == {500}
    assert request(stor.port, "GET", f"/{sha256(data)}").status == 404
    assert dat_files(pairs[0][0]) == []


# -- 3: an unmounted disk gets no files ---------------------------------------------


@pytest.fixture
def mounted_pair(tmp_path):
    """A pair of storages on filesystems of their own (tmpfs), as mounted disks are."""
    mounted = []
    for name in ("m1", "m2"):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(d)], check=True)
        mounted.append(str(d))
    yield mounted
    for d in mounted:
        subprocess.run(["umount", d], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
@pytest.mark.parametrize("check_mounts", [True, None])
def test_a_storage_on_the_root_filesystem_gets_no_new_files(stor_process, tmp_path,
                                                            mounted_pair, check_mounts):
    if os.stat(tmp_path).st_dev != os.stat("/").st_dev:
        pytest.skip("the test's temp dir is not on the / filesystem here")
    unmounted = [str(tmp_path / "u1"), str(tmp_path / "u2")]  # disks that did not mount
    for d in unmounted:
        os.mkdir(d)
    # None is written as null, which means absent (the old service's configs omit it)
    stor = stor_process(storage_pairs=[mounted_pair, unmounted], check_mounts=check_mounts)
    for i in range(10):
        data = os.urandom(1000) + bytes([i])
        code, body = post(stor.port, data)
        assert code == 201
        assert all(p.startswith(tuple(mounted_pair)) for p in json.loads(body))
    assert dat_files(tmp_path / "u1") == [] and dat_files(tmp_path / "u2") == []
    status = request(stor.port, "GET", "/status")
    assert status.status == 503 and b"is on the / filesystem" in status.body


# -- 5: a corrupt replica is never served as good -----------------------------------


def get_or_cut(port: int, sha: str) -> "tuple[int, bytes] | None":
    """(status, body) of a GET, or None when the transfer was cut before its end."""
    try:
        got = request(port, "GET", f"/{sha}")
    except (http.client.IncompleteRead, ConnectionError):
        return None
    return got.status, got.body


def quarantined(storage: str) -> list[Path]:
    q = Path(storage, ".stor-quarantine")
    return list(q.iterdir()) if q.exists() else []


@pytest.mark.parametrize("size", [10_000, 3 * MiB], ids=["small", "large"])
def test_a_corrupt_only_replica_is_never_served_and_is_kept_aside(stor_process, size):
    stor = stor_process()
    data = os.urandom(size)
    _, body = post(stor.port, data)
    rotten, gone = json.loads(body)
    os.unlink(gone)
    flip(rotten, size // 2)
    not_found = (404, f"Caught failure::stor::filenotfound: File '{sha256(data)}' not found\n"
                 .encode())
    deadline = time.monotonic() + 10
    while (got := get_or_cut(stor.port, sha256(data))) != not_found:
        assert got is None  # cut before its end (large), until it is moved aside
        assert time.monotonic() < deadline
    storage = layout.storage_of(rotten, sha256(data))
    while not quarantined(storage):  # moved aside in the background, just after the answer
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(quarantined(storage)) == 1  # kept for the operator, never deleted
    assert not os.path.exists(rotten) and not os.path.exists(gone)


@pytest.mark.parametrize("size", [10_000, 3 * MiB], ids=["small", "large"])
def test_with_one_replica_corrupt_every_200_is_the_right_file(stor_process, size):
    stor = stor_process()
    data = os.urandom(size)
    _, body = post(stor.port, data)
    paths = json.loads(body)
    flip(paths[0], size // 2)
    for _ in range(6):  # whichever replica a GET picks first
        got = get_or_cut(stor.port, sha256(data))
        assert got is None or got == (200, data)  # never a wrong file taken for a whole one
    storage = layout.storage_of(paths[0], sha256(data))
    if quarantined(storage):  # it was read: then it is repaired from its twin
        deadline = time.monotonic() + 10
        while not Path(paths[0]).exists() or Path(paths[0]).read_bytes() != data:
            assert time.monotonic() < deadline, "the corrupt replica was not repaired"
            time.sleep(0.05)  # moved aside, then copied back from its twin


# -- 6: a paused upload's temp file is never swept -----------------------------------


def test_the_temp_sweep_never_removes_a_live_upload(stor_process):
    stor = stor_process(cleanup_tempdir_period=1)
    data = os.urandom(2 * MiB)
    with socket.create_connection(("127.0.0.1", stor.port)) as sock:
        sock.sendall(f"POST /{sha256(data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     f"Authorization: {AUTH_HEADER}\r\n\r\n".encode() + data[:MiB])
        time.sleep(11)  # the client pauses: longer than any staleness rule, over 10 sweeps
        sock.sendall(data[MiB:])
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 201 "), answer


# -- 7: space is reserved across uploads ---------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_two_uploads_that_fit_only_one_at_a_time_one_is_stored(stor_process, tmp_path):
    members = []
    for name in ("t1", "t2"):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(d)], check=True)
        members.append(str(d))
    try:
        stor = stor_process(storage_pairs=[members])
        files = [os.urandom(6 * MiB) for _ in range(2)]
        socks = [socket.create_connection(("127.0.0.1", stor.port), timeout=60) for _ in files]
        for sock, data in zip(socks, files):  # both under way before either is complete
            sock.sendall(f"POST /{sha256(data)} HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(data)}\r\nAuthorization: {AUTH_HEADER}\r\n\r\n"
                         .encode() + data[:3 * MiB])
        for sock, data in zip(socks, files):
            sock.sendall(data[3 * MiB:])
        codes = sorted(int(sock.recv(4096).split()[1]) for sock in socks)
        for sock in socks:
            sock.close()
        assert codes == [201, 507]
        stored = [d for d in files if request(stor.port, "GET", f"/{sha256(d)}").status == 200]
        assert len(stored) == 1
        assert request(stor.port, "GET", f"/{sha256(stored[0])}").body == stored[0]
        assert not any(n for m in members for n in os.listdir(Path(m, ".stor-tmp"))
                       if not n.startswith(".probe."))
    finally:
        for d in members:
            subprocess.run(["umount", d], check=False)


# -- 8: limits on the request line and headers ---------------------------------------


def raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_huge_url_is_414_and_huge_headers_are_431(stor_process):
    stor = stor_process()
    assert raw(stor.port, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n").startswith(
        b"HTTP/1.1 414 ")
    assert raw(stor.port, b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n"
               ).startswith(b"HTTP/1.1 431 ")
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"c" * 1000) for i in range(100))
    assert raw(stor.port, b"GET / HTTP/1.1\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431 ")


def test_headers_sent_too_slowly_are_cut_at_the_header_timeout(stor_process):
    stor = stor_process(header_timeout=2)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", stor.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer = b""
        try:
            for i in range(40):  # one header line every half second: never done
                sock.sendall(b"X-Slow-%d: x\r\n" % i)
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            pass
    assert time.monotonic() - start < 10
    assert answer.startswith(b"HTTP/1.1 408 ")


def test_an_idle_kept_alive_connection_is_closed_at_the_header_timeout(stor_process):
    stor = stor_process(header_timeout=1)
    with socket.create_connection(("127.0.0.1", stor.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200 ")
        start = time.monotonic()
        assert sock.recv(4096) == b""  # closed, without an answer
        assert time.monotonic() - start < 5


def test_a_body_that_stops_arriving_is_cut_at_the_body_timeout(stor_process):
    stor = stor_process(body_timeout=1)
    with socket.create_connection(("127.0.0.1", stor.port), timeout=30) as sock:
        sock.sendall(f"POST /{'ab' * 32} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                     f"Authorization: {AUTH_HEADER}\r\n\r\n".encode() + b"x" * 10)
        start = time.monotonic()
        assert sock.recv(4096) == b""
        assert time.monotonic() - start < 5
    temps = [p for s in stor.extra["storages"] for p in Path(s).glob(".stor-tmp/*")
             if not p.name.startswith(".probe.")]
    deadline = time.monotonic() + 5
    while temps and time.monotonic() < deadline:
        time.sleep(0.05)
        temps = [p for s in stor.extra["storages"] for p in Path(s).glob(".stor-tmp/*")
                 if not p.name.startswith(".probe.")]
    assert temps == []


# -- 9: new directories are fsynced into their parents -------------------------------


def whole_calls(lines: list[str]) -> list[str]:
    """strace lines with every ``<unfinished ...>`` call joined to its ``<... resumed>``
    end (two threads in a system call at once split it over two lines)."""
    pending: dict[str, str] = {}
    whole = []
    for line in lines:
        pid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
        elif "<... " in line and " resumed>" in line and pid in pending:
            whole.append(pending.pop(pid) + line.split(" resumed>", 1)[1])
        else:
            whole.append(line)
    return whole


def traced_upload(stor, data: bytes, trace: Path, calls: str):  # type: ignore[no-untyped-def]
    """Upload ``data`` (201) while ``strace -f -y`` records ``calls`` of the stor
    process; the traced lines (split calls joined) and the answer's body."""
    tracer = subprocess.Popen(["strace", "-f", "-y", "-qq", "-o", str(trace),
                               "-e", f"trace={calls}", "-p", str(stor.popen.pid)])
    try:
        deadline = time.monotonic() + 10
        while not trace.exists() or trace.stat().st_size == 0:  # attached: it logs nothing yet
            code, _ = post(stor.port, b"warm-up %f" % time.monotonic())
            assert code == 201
            assert time.monotonic() < deadline
        code, _ = post(stor.port, b"warm-up %f" % time.monotonic())  # strace attaches thread by
        assert code == 201  # thread: its first line may come before the pool's are traced
        code, body = post(stor.port, data)
        assert code == 201
    finally:
        tracer.terminate()
        tracer.wait(10)
    return whole_calls(trace.read_text().splitlines()), body


def test_every_directory_a_commit_creates_is_fsynced_up_to_the_storage(stor_process, tmp_path):
    """A streaming upload fsyncs the parent of each new directory and the directory
    the rename changed."""
    stor = stor_process()
    data = os.urandom(2 * 1024 * 1024)  # above stor.disk.small.SMALL_MAX: file by file
    lines, body = traced_upload(stor, data, tmp_path / "strace.out",
                                "mkdir,mkdirat,rename,renameat,renameat2,fsync")
    sha = sha256(data).upper()
    made = [d for line in lines if "mkdir" in line and line.endswith("= 0")
            for d in resolved_paths(line)[:1] if f"/{sha[:2]}" in d]
    fsynced = [line.split("<")[1].split(">")[0] for line in lines if line.split()[1:2]
               and "fsync(" in line and "<" in line]
    for path in json.loads(body):
        storage = layout.storage_of(path, sha256(data))
        created = [d for d in made if d.startswith(storage + "/")]
        assert created, f"no directory was created on {storage}?"
        for directory in created:  # the parent of each new directory, up to the storage
            assert os.path.dirname(directory) in fsynced, (directory, fsynced)
        assert os.path.dirname(path) in fsynced  # and the directory the rename changed


def test_a_small_upload_is_flushed_by_a_syncfs_after_its_directories_and_rename(
        stor_process, tmp_path):
    """A small upload's group commit: its data flushed (a ``syncfs`` after the write,
    before the rename), then a ``syncfs`` that began after every directory it created
    and its rename covers those entries."""
    stor = stor_process()
    data = os.urandom(5000)
    lines, body = traced_upload(stor, data, tmp_path / "strace.out",
                                "mkdir,mkdirat,rename,renameat,renameat2,fsync,syncfs,write")
    sha = sha256(data).upper()
    syncs = [i for i, line in enumerate(lines) if "syncfs(" in line and line.endswith("= 0")]
    for path in json.loads(body):
        storage = layout.storage_of(path, sha256(data))
        changes = [i for i, line in enumerate(lines) if "= 0" in line and (
            ("mkdir" in line and f'"{storage}/{sha[:2]}' in line)
            or ("rename" in line and f'"{path}"' in line))]
        renamed = first_line(lines, lambda line: "rename" in line and f'"{path}"' in line)
        written = first_line(lines, lambda line: line.split()[1].startswith("write(")
                             and f"/{sha.lower()}." in line and layout.TEMP_DIR in line)
        assert changes, f"nothing was created on {storage}?"
        assert any(written < i < renamed for i in syncs), "the data was not flushed first"
        assert any(i > max(changes) for i in syncs), "no syncfs after the entries changed"


def test_a_write_through_marker_is_durable_before_its_file_is_in_place(stor_process, moto,
                                                                        bucket, tmp_path):
    """The marker is what brings a 201'd file to S3 after a power cut: on each member
    it is created and its outbox directory fsynced before the file is renamed into
    place (a crash in between leaves a file S3 would otherwise never get)."""
    stor = stor_process(s3_write_through=True, **s3_keys(moto, bucket))
    data = os.urandom(50_000)
    lines, body = traced_upload(stor, data, tmp_path / "strace.out",
                                "openat,rename,renameat,renameat2,fsync")
    sha = sha256(data)
    for path in json.loads(body):
        storage = layout.storage_of(path, sha)
        outbox = os.path.join(storage, ".stor-outbox")
        created = first_line(lines, lambda line: "O_CREAT" in line and "= -1" not in line
                             and os.path.join(outbox, sha) in resolved_paths(line))
        synced = first_line(lines, lambda line: "fsync(" in line and f"<{outbox}>" in line
                            and line.endswith("= 0"), after=created)
        renamed = first_line(lines, lambda line: "rename" in line and line.endswith("= 0")
                             and path in resolved_paths(line))
        assert created < synced < renamed, (path, created, synced, renamed)


def first_line(lines: list[str], wanted, after: int = -1) -> int:  # type: ignore[no-untyped-def]
    """The index of the first line after ``after`` that is ``wanted``."""
    found = [i for i, line in enumerate(lines) if i > after and wanted(line)]
    assert found, "no such system call was traced"
    return found[0]
