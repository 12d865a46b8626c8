"""Every answer from the property it promises (issue 18): duplicates, HEAD, leaks,
reservations, absurd lengths.  stor runs as real processes; faults are real
(replicas truncated, emptied or flipped on disk; clients that close at the last
byte; a tmpfs that fills).
"""

import json
import subprocess
import os
import socket
import time
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, request
from test_integrity import flip, post, sha256
from stor.core import layout

pytestmark = pytest.mark.acceptance('fault', 'process', 'stor-process')

MiB = 1024 * 1024


def damage(path: str, how: str) -> None:
    """Damage a replica as a disk or an operator might: keeps the mtime."""
    st = os.stat(path)
    if how == "flip":
        flip(path, st.st_size // 2)
    else:
        os.truncate(path, 0 if how == "empty" else st.st_size // 2)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def holds(path: str, data: bytes) -> bool:
    """Whether ``path`` holds ``data`` now: one open, since a replica is moved aside (to be
    repaired) between any two looks."""
    try:
        return Path(path).read_bytes() == data
    except FileNotFoundError:
        return False


def wait_until(condition, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def expect_post(port: int, data: bytes) -> tuple[int, bytes]:
    """A POST with ``Expect: 100-continue``: the final answer if it comes before the
    body (the body is then never sent), else the answer after the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /{sha256(data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     f"Authorization: {AUTH_HEADER}\r\nExpect: 100-continue\r\n\r\n".encode())
        head = sock.recv(65536)
        if head.startswith(b"HTTP/1.1 100 "):
            sock.sendall(data)
            head = head.split(b"\r\n\r\n", 1)[1] or sock.recv(65536)
        return read_answer(sock, head)


def read_answer(sock: socket.socket, got: bytes) -> tuple[int, bytes]:
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, body = got.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


# -- case 1: a 200 duplicate names only exact, durable replicas ----------------------


@pytest.mark.parametrize("how", ["empty", "truncate", "flip"])
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect"])
def test_a_duplicate_answer_never_names_a_damaged_replica(stor_process, how, expect):
    stor = stor_process()
    data = os.urandom(5000)
    code, body = post(stor.port, data)
    assert code == 201
    paths = json.loads(body)
    damage(paths[0], how)
    code, body = (expect_post if expect else post)(stor.port, data)
    assert code in (200, 201), body
    for path in json.loads(body):  # every file the answer names holds the exact bytes
        assert Path(path).read_bytes() == data, (how, path)
    # and the damaged replica does not stay damaged: replaced, or moved aside and repaired
    wait_until(lambda: holds(paths[0], data), f"{paths[0]} repaired")


def test_a_duplicate_of_intact_replicas_is_still_200_with_both(stor_process):
    stor = stor_process()
    data = os.urandom(5000)
    _, body = post(stor.port, data)
    code, again = post(stor.port, data)
    assert code == 200 and sorted(json.loads(again)) == sorted(json.loads(body))
    code, early = expect_post(stor.port, data)
    assert code == 200 and sorted(json.loads(early)) == sorted(json.loads(body))


# -- case 4: HEAD answers what a GET would --------------------------------------------


def head_and_get(port: int, sha: str) -> tuple[tuple[int, str | None], tuple[int, int | None]]:
    """(status, Content-Length) of a HEAD, then of a GET (its body's length when 200)."""
    head = request(port, "HEAD", f"/{sha}")
    try:
        got = request(port, "GET", f"/{sha}")
        get = (got.status, len(got.body) if got.status == 200 else None)
    except Exception:  # cut: a GET would not deliver it
        get = (0, None)
    return (head.status, head.headers.get("content-length") if head.status == 200 else None), get


@pytest.mark.parametrize("size", [5000, MiB], ids=["small", "large"])
@pytest.mark.parametrize("how", ["truncate", "extend"])
def test_head_never_promises_what_get_will_not_deliver(stor_process, size, how):
    stor = stor_process()
    data = os.urandom(size)
    _, body = post(stor.port, data)
    sha = sha256(data)
    assert request(stor.port, "HEAD", f"/{sha}").headers["content-length"] == str(size)
    for path in json.loads(body):  # both replicas changed size behind stor's back
        if how == "truncate":
            damage(path, "truncate")
        else:
            with open(path, "ab") as f:
                f.write(b"tail")
    (head_status, head_length), (get_status, get_length) = head_and_get(stor.port, sha)
    assert head_status != 200, (head_status, head_length)  # no replica holds the bytes
    assert head_status == 404
    if get_status != 0:
        assert get_status == head_status


@pytest.mark.parametrize("size", [5000, MiB], ids=["small", "large"])
def test_head_with_one_replica_damaged_answers_the_twins_size(stor_process, size):
    stor = stor_process()
    data = os.urandom(size)
    _, body = post(stor.port, data)
    damage(json.loads(body)[0], "truncate")
    for _ in range(6):  # whichever replica the lookup picks first
        head = request(stor.port, "HEAD", f"/{sha256(data)}")
        assert (head.status, head.headers["content-length"]) == (200, str(size))


# -- case 5: nothing an upload holds outlives it ---------------------------------------


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def temps_of(storages: list[str]) -> list[Path]:
    return [p for s in storages for p in Path(s).glob(".stor-tmp/*")]


def test_clients_closing_at_the_last_body_byte_leave_nothing_behind(stor_process):
    stor = stor_process(body_timeout=5)
    storages = stor.extra["storages"]
    for i in range(3):  # every lazily opened fd (pool threads, lock dir, logs) is open now
        assert post(stor.port, os.urandom(200_000) + bytes([i]))[0] == 201
    baseline = open_fds(stor.popen.pid)
    for i in range(300):
        data = os.urandom(100_000) + i.to_bytes(2, "big")
        sock = socket.create_connection(("127.0.0.1", stor.port))
        sock.sendall(f"POST /{sha256(data)} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                     f"Authorization: {AUTH_HEADER}\r\n\r\n".encode() + data)
        sock.close()  # gone the moment the last byte is out
    # no later than body_timeout after the last close, everything is released
    wait_until(lambda: open_fds(stor.popen.pid) <= baseline and not temps_of(storages),
               f"fds back to {baseline} (now {open_fds(stor.popen.pid)}) and no temps "
               f"({len(temps_of(storages))})", timeout=5 + 10)
    assert "CancelledError" not in stor.out + stor.err
    assert post(stor.port, os.urandom(1000))[0] == 201  # and it still takes uploads


# -- case 6: a chunked upload occupies about its size ------------------------------


def chunked_post(port: int, data: bytes, chunk: int = 400) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        body = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + chunk]), data[i:i + chunk])
                        for i in range(0, len(data), chunk)) + b"0\r\n\r\n"
        sock.sendall(f"POST /{sha256(data)} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     f"Authorization: {AUTH_HEADER}\r\n\r\n".encode() + body)
        return read_answer(sock, b"")


@pytest.fixture(params=[40, 200], ids=["40m", "200m"])
def small_tmpfs_pair(tmp_path, request):
    """A pair on two tmpfs: 40 MiB is less than one 64 MiB reservation step."""
    members = []
    for name in ("c1", "c2"):
        d = tmp_path / name
        d.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={request.param}m", "tmpfs", str(d)],
                       check=True)
        members.append(str(d))
    yield members
    for d in members:
        subprocess.run(["umount", d], check=False)


def free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_small_chunked_upload_needs_and_keeps_only_its_size(stor_process, small_tmpfs_pair):
    stor = stor_process(storage_pairs=[small_tmpfs_pair])
    before = [free(m) for m in small_tmpfs_pair]
    data = os.urandom(1000)
    code, body = chunked_post(stor.port, data)
    assert code == 201, body  # no 64 MiB needed to start
    for path, member, was in zip(json.loads(body), small_tmpfs_pair, before):
        assert Path(path).read_bytes() == data
        assert os.stat(path).st_blocks * 512 <= 64 * 1024, os.stat(path).st_blocks
        assert was - free(member) <= 256 * 1024, (was, free(member))  # the file and its dirs


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_chunked_upload_larger_than_the_free_space_is_507(stor_process, small_tmpfs_pair):
    stor = stor_process(storage_pairs=[small_tmpfs_pair])
    if free(small_tmpfs_pair[0]) > 100 * MiB:
        pytest.skip("for the small disk")
    code, _ = chunked_post(stor.port, os.urandom(45 * MiB), chunk=MiB)
    assert code == 507
    wait_until(lambda: not temps_of(small_tmpfs_pair), "temps removed")
    code, _ = chunked_post(stor.port, os.urandom(10 * MiB), chunk=MiB)
    assert code == 201  # what the refused one held was given back


# -- case 7: an absurd length gets an answer -----------------------------------------


def announce(port: int, headers: str, body: bytes = b"", keep_sending: bool = False) -> bytes:
    """Send a POST's headers (and ``body``); the whole answer, up to the close.  With
    ``keep_sending`` the client goes on sending body bytes until it is answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(f"POST /{'ab' * 32} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH_HEADER}\r\n"
                     f"{headers}\r\n\r\n".encode() + body)
        if keep_sending:
            sock.setblocking(False)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    got = sock.recv(65536)
                    if got:
                        sock.setblocking(True)
                        return got + b"".join(iter(lambda: sock.recv(65536), b""))
                except BlockingIOError:
                    pass
                try:
                    sock.send(b"x" * 65536)
                except BlockingIOError:
                    time.sleep(0.01)
            raise AssertionError("no answer while the body was being sent")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


@pytest.mark.parametrize("value", [b"1" + b"0" * 26, str(2 ** 63).encode(), b"1" * 5000])
def test_a_content_length_that_is_no_file_offset_is_400_with_a_reason(stor_process, value):
    stor = stor_process()
    answer = announce(stor.port, f"Content-Length: {value.decode()}")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Content-Length is not a number below 2^63" in answer


def test_a_chunk_size_that_is_no_file_offset_is_400_with_a_reason(stor_process):
    stor = stor_process()
    answer = announce(stor.port, "Transfer-Encoding: chunked", b"f" * 40 + b"\r\nabc")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"chunk size is not a number below 2^63" in answer


def test_a_length_above_max_upload_size_is_413_before_the_body(stor_process):
    stor = stor_process(max_upload_size=MiB)
    answer = announce(stor.port, f"Content-Length: {2 ** 63 - 1}")
    assert answer.startswith(b"HTTP/1.1 413 "), answer


@pytest.mark.parametrize("keep_sending", [False, True], ids=["waiting", "sending"])
def test_a_length_no_pair_can_hold_is_507_before_the_body(stor_process, keep_sending):
    stor = stor_process()
    answer = announce(stor.port, f"Content-Length: {10 ** 18}", keep_sending=keep_sending)
    assert answer.startswith(b"HTTP/1.1 507 "), answer
    assert answer.endswith(b"\r\n\r\nCaught failure::stor: Not enough space on storages\n"), answer
    assert post(stor.port, os.urandom(1000))[0] == 201


def test_a_large_head_hashes_a_file_once_and_not_at_every_head(stor_process, tmp_path):
    """The verification is remembered for that very file: the second HEAD reads nothing
    (its strace shows no pread of the file), and a change of the file is seen again."""
    stor = stor_process()
    data = os.urandom(2 * MiB)
    _, body = post(stor.port, data)
    sha = sha256(data)
    stor.terminate()  # a new process: nothing remembered
    stor2 = stor_process(storage_pairs=[stor.extra["storages"][0:2], stor.extra["storages"][2:4]])
    assert request(stor2.port, "HEAD", f"/{sha}").status == 200  # hashed now
    trace = tmp_path / "head.trace"
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(trace), "-e",
                               "trace=pread64,preadv,preadv2,read,recvfrom",
                               "-p", str(stor2.popen.pid)])
    try:
        def attached() -> bool:  # once a request's read is traced
            request(stor2.port, "GET", "/")
            return trace.exists() and "GET / HTTP" in trace.read_text(errors="replace")

        wait_until(attached, "strace attached")
        for _ in range(3):
            assert request(stor2.port, "HEAD", f"/{sha}").headers["content-length"] == str(len(data))
    finally:
        tracer.terminate()
        tracer.wait(10)
    big_reads = [line for line in trace.read_text().splitlines() if "1048576" in line]
    assert big_reads == []
    for path in json.loads(body):
        damage(path, "truncate")
    assert request(stor2.port, "HEAD", f"/{sha}").status == 404


# -- case 10: an emptied twin is brought back by reads ------------------------------------


def test_reads_of_the_good_replica_bring_back_an_emptied_twin(stor_process):
    """The GETs land on the good replica (the lookup cache keeps its path), so only
    the twin check of reads can notice the emptied one: it must, not just its presence."""
    stats = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stats.bind(("127.0.0.1", 0))
    stats.settimeout(10)
    stor = stor_process(statsite={"host": "127.0.0.1", "port": stats.getsockname()[1]})
    try:
        data = os.urandom(5000)
        _, body = post(stor.port, data)
        paths = json.loads(body)
        assert request(stor.port, "GET", f"/{sha256(data)}").body == data
        keys = {p: f"success.get.ok_old.{layout.server_name(layout.storage_of(p, sha256(data)))}"
                   f".count" for p in paths}
        served = None
        while served is None:  # which replica answered (and is now the cached path)
            line = stats.recv(65536).decode()
            served = next((p for p in paths if keys[p] in line), None)
    finally:
        stats.close()
    emptied = next(p for p in paths if p != served)
    damage(emptied, "empty")

    def read_and_look() -> bool:  # the file stays read while the twin is awaited
        assert request(stor.port, "GET", f"/{sha256(data)}").body == data
        return Path(emptied).read_bytes() == data

    # a twin found whole is trusted by reads for a second (stor.disk.repair.TWIN_RECHECK)
    wait_until(read_and_look, f"{emptied} brought back")


# -- case 14: a replica that cannot be read is a storage fault, not a miss ----------------


def unreadable(path: str) -> None:
    """Make ``path`` fail to open with an error other than "not there" (ELOOP: a
    symlink to itself), a fault root cannot bypass as it does ``chmod``."""
    os.unlink(path)
    os.symlink(os.path.basename(path), path)


@pytest.mark.parametrize("size", [5000, MiB], ids=["small", "large"])
def test_a_file_no_replica_can_deliver_is_500_never_404(stor_process, size):
    stor = stor_process()
    data = os.urandom(size)
    _, body = post(stor.port, data)
    sha = sha256(data)
    for path in json.loads(body):
        unreadable(path)
    for method in ("GET", "HEAD"):
        answer = request(stor.port, method, f"/{sha}")
        assert answer.status == 500, (method, answer.status, answer.body)
    assert b"Too many levels of symbolic links" in request(stor.port, "GET", f"/{sha}").body


def test_a_replica_that_cannot_be_read_is_passed_over_for_its_twin(stor_process):
    stor = stor_process()
    data = os.urandom(MiB)
    _, body = post(stor.port, data)
    unreadable(json.loads(body)[0])
    for _ in range(6):  # whichever replica the lookup picks first
        assert request(stor.port, "GET", f"/{sha256(data)}").body == data
        assert request(stor.port, "HEAD", f"/{sha256(data)}").status == 200
