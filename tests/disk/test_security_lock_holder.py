"""Issue 19, finding 2: a process holding a SHA's lock cannot starve the host.

Uploads waiting for a held lock answer 503 with ``Retry-After`` after a
bounded wait instead of hanging, and ``/status`` and ``/health/ready`` answer
meanwhile, however many uploads are waiting.
"""

import fcntl
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.harness import AUTH_HEADER, request
from stor.disk.diskpool import DEFAULT_SIZE
from stor.disk.locks import LOCK_WAIT

pytestmark = pytest.mark.acceptance('stor-process')


WAITING_UPLOADS = 12
"""More than the disk pool's threads."""


def _bodies_with_prefix(prefix: str, n: int) -> list[bytes]:
    found, i = [], 0
    seed = os.urandom(8)
    while len(found) < n:
        body = seed + str(i).encode()
        if hashlib.sha256(body).hexdigest().startswith(prefix):
            found.append(body)
        i += 1
    return found


def _post(port: int, body: bytes):
    sha = hashlib.sha256(body).hexdigest()
    return request(port, "POST", f"/{sha}", body, {"Authorization": AUTH_HEADER},
                   timeout=LOCK_WAIT * 4)


def test_a_held_lock_answers_503_in_bounded_time_and_health_never_waits(
        stor_process, tmp_path: Path) -> None:
    stor = stor_process()
    bodies = _bodies_with_prefix("abc", WAITING_UPLOADS)
    lock_file = tmp_path / "locks" / "abc.lock"
    fd = os.open(lock_file, os.O_RDONLY | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, as by a stuck or hostile process of the group
    try:
        with ThreadPoolExecutor(WAITING_UPLOADS) as pool:
            started = time.monotonic()
            uploads = [pool.submit(_post, stor.port, body) for body in bodies]
            time.sleep(0.5)  # the uploads reach the lock (nothing observable to await)
            for path in ("/status", "/health/ready", "/metrics"):
                asked = time.monotonic()
                answer = request(stor.port, "GET", path, timeout=5)
                assert answer.status == 200, (path, answer)
                assert time.monotonic() - asked < 2.0, path
            answers = [u.result() for u in uploads]
            took = time.monotonic() - started
        assert [a.status for a in answers] == [503] * WAITING_UPLOADS
        assert all(a.headers.get("retry-after") == "1" for a in answers)
        assert took < LOCK_WAIT * 3
    finally:
        os.close(fd)
    assert _post(stor.port, bodies[0]).status == 201


def _lock_files_open(pid: int, lock_file: Path) -> int:
    """How many descriptors of ``pid`` name ``lock_file`` (the uploads waiting for it)."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd) == str(lock_file)
        except OSError:
            continue
    return count


def test_waiters_on_held_locks_leave_the_disk_pool_to_other_requests(
        stor_process, tmp_path: Path) -> None:
    """More uploads waiting for held locks than the disk pool has threads: a GET and a
    POST of other SHAs are answered while every waiter still waits (before, each
    waiter held a thread for the whole bound and the GET queued behind them)."""
    stor = stor_process()
    other = os.urandom(3000)
    assert _post(stor.port, other).status == 201
    bodies = _bodies_with_prefix("abc", DEFAULT_SIZE + 4)
    lock_file = tmp_path / "locks" / "abc.lock"
    fd = os.open(lock_file, os.O_RDONLY | os.O_CREAT, 0o640)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held, as by a hostile process of the group
    try:
        with ThreadPoolExecutor(len(bodies)) as pool:
            uploads = [pool.submit(_post, stor.port, body) for body in bodies]
            deadline = time.monotonic() + LOCK_WAIT / 2
            while _lock_files_open(stor.popen.pid, lock_file) < DEFAULT_SIZE:
                assert time.monotonic() < deadline, "the uploads never reached the lock"
                time.sleep(0.01)
            got = request(stor.port, "GET", f"/{hashlib.sha256(other).hexdigest()}",
                          timeout=LOCK_WAIT * 2)
            posted = _post(stor.port, os.urandom(2000))
            waiting = sum(not u.done() for u in uploads)
            os.close(fd)  # let go: the waiters go on
            fd = -1
            answers = [u.result() for u in uploads]
        assert (got.status, got.body) == (200, other)
        assert posted.status == 201
        assert waiting == len(bodies), "the GET and POST were answered only after waiters gave up"
        assert [a.status for a in answers] == [201] * len(bodies)
    finally:
        if fd >= 0:
            os.close(fd)
