"""Crash consistency, checked from stor's own system calls (issue 18, Build's last item).

stor runs as a real process with ``strace -f -yy`` attached; the test makes
uploads (new and shared directories, duplicates, concurrent identical and
distinct SHAs), a DELETE, and files left unsynced by a process that died;
:mod:`support.crashcheck` then replays the trace under the conservative persistence
model and lists every answer that was written before what it promised was
durable.  Suppressing one fsync from outside (``strace -e inject``) must be
caught, or the check proves nothing.
"""

import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.crashcheck import STRACE_CALLS, Ack, Trace
from support.harness import descendants, pid_alive
from support.helpers import AUTH_HEADER
from stor.core import layout

pytestmark = [pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace"),
              pytest.mark.acceptance('process', 'stor-process')]

DELETER = "deleter:delete_pass"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serving_pids(stor) -> list[int]:  # type: ignore[no-untyped-def]
    """The processes that answer: stor itself, or with ``--workers N`` its N workers,
    once all N are there (stor answers as soon as one is: trace only that one and the
    other's answers are missing from the trace)."""
    args = [str(a) for a in stor.popen.args]
    if "--workers" not in args:
        return [stor.popen.pid]
    expected = int(args[args.index("--workers") + 1])
    deadline = time.monotonic() + 30
    while len(workers := [pid for pid, _ in descendants(stor.popen.pid)]) < expected:
        assert time.monotonic() < deadline, (workers, expected)
        time.sleep(0.05)
    return workers


class Tracer:
    """``strace`` attached to every serving process of a running stor, recording
    :data:`STRACE_CALLS` (with ``--workers``, each worker: a sibling's answer counts)."""

    def __init__(self, stor, out: Path, inject: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.out = out
        self.stor = stor
        self.pids = serving_pids(stor)
        cmd = ["strace", "-f", "-yy", "-s", "1024", "-o", str(out),
               "-e", f"trace={STRACE_CALLS}"]
        if inject:
            cmd += ["-e", f"inject={inject}"]
        self.log = out.with_suffix(".strace-log")
        with open(self.log, "w") as log:
            self.popen = subprocess.Popen(
                cmd + [arg for pid in self.pids for arg in ("-p", str(pid))], stderr=log)
        deadline = time.monotonic() + 15
        while not all(f"Process {pid} attached" in self.log.read_text() for pid in self.pids):
            assert self.popen.poll() is None and time.monotonic() < deadline, \
                "strace did not attach: " + self.log.read_text()
            time.sleep(0.02)
        while not out.exists() or "HTTP/1.1 200" not in out.read_text(errors="replace"):
            call(stor.port, "GET", "/")  # attached once its answer is traced
            assert time.monotonic() < deadline, "strace did not attach"

    def stop(self, acks: list[Ack] = ()) -> Trace:  # type: ignore[assignment]
        """Detach, once every answer in ``acks`` is in the trace: strace writes a call's
        line when it returns, which may come a moment after the client has read it."""
        deadline = time.monotonic() + 10
        while acks and time.monotonic() < deadline:
            trace = Trace(self.out.read_text(errors="replace").splitlines())
            if all(trace.answered(ack) for ack in acks):
                break
            time.sleep(0.05)
        self.popen.terminate()
        self.popen.wait(15)
        return Trace(self.out.read_text(errors="replace").splitlines())


def call(port: int, method: str, path: str, body: bytes | None = None,
         auth: str | None = None) -> tuple[int, bytes, int]:
    """(status, body, the client's port) of one request on its own connection."""
    return call_worker(port, method, path, body, auth)[:3]  # type: ignore[return-value]


def call_worker(port: int, method: str, path: str, body: bytes | None = None,
                auth: str | None = None) -> tuple[int, bytes, int, str | None]:
    """:func:`call`, and the ``Stor-Worker`` (pid) that answered, with ``--workers``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.connect()
        client_port = conn.sock.getsockname()[1]
        conn.request(method, path, body=body, headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        return (response.status, response.read(), client_port,
                response.getheader("Stor-Worker"))
    finally:
        conn.close()


class Client:
    """Uploads and deletes, remembering every 2xx as an :class:`Ack`."""

    def __init__(self, stor) -> None:  # type: ignore[no-untyped-def]
        self.port = stor.port
        self.storages = tuple(stor.extra["storages"])
        self.acks: list[Ack] = []
        self.workers: list[str | None] = []

    def post(self, data: bytes) -> int:
        status, body, client_port, worker = call_worker(self.port, "POST", f"/{sha256(data)}",
                                                        data, AUTH_HEADER)
        assert status in (200, 201), (status, body)
        self.acks.append(Ack(client_port, tuple(json.loads(body)), self.storages))
        self.workers.append(worker)
        return status

    def delete(self, sha: str) -> None:
        token = "Basic " + base64.b64encode(DELETER.encode()).decode()
        status, body, client_port = call(self.port, "DELETE", f"/{sha}", auth=token)
        assert status == 204, (status, body)
        paths = tuple(layout.file_path(s, sha) for s in self.storages)
        self.acks.append(Ack(client_port, paths, self.storages, removal=True))


def sharing_first_byte(n: int) -> list[bytes]:
    """``n`` bodies whose SHAs share their first byte pair (one ``AA`` directory)."""
    by_prefix: dict[str, list[bytes]] = {}
    while True:
        data = os.urandom(3000)
        group = by_prefix.setdefault(sha256(data)[:2], [])
        group.append(data)
        if len(group) == n:
            return group


def left_unsynced(storages: tuple[str, str], data: bytes) -> None:
    """What a process killed between its renames and its directory fsync leaves:
    the file in place on both members, nothing fsynced."""
    for storage in storages:
        path = Path(layout.file_path(storage, sha256(data)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


WORKERS = pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])


@WORKERS
def test_every_acknowledged_upload_was_durable_when_answered(stor_process, tmp_path, workers):
    stor = stor_process(workers, delete_auth=DELETER)
    storages = tuple(stor.extra["storages"])
    dead = os.urandom(4000)
    left_unsynced(storages[:2], dead)  # before stor ever traced: created "by someone else"
    shared_dirs = os.urandom(2000)
    Path(os.path.dirname(layout.file_path(storages[2], sha256(shared_dirs)))).mkdir(parents=True)
    Path(os.path.dirname(layout.file_path(storages[3], sha256(shared_dirs)))).mkdir(parents=True)
    tracer = Tracer(stor, tmp_path / "trace")
    client = Client(stor)
    try:
        for i in range(5):  # new directories
            client.post(os.urandom(5000) + bytes([i]))
        for data in sharing_first_byte(3):  # an AA directory shared
            client.post(data)
        client.post(shared_dirs)  # AA/BB/CC made by someone else, never fsynced
        assert client.post(dead) == 200  # a duplicate left by a dead process
        again = os.urandom(70_000)
        client.post(again)
        assert client.post(again) == 200  # a plain duplicate
        same = os.urandom(100_000)
        distinct = [os.urandom(20_000) + bytes([i]) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:  # concurrent identical, then distinct SHAs
            assert sorted(pool.map(client.post, [same] * 8)).count(201) == 1
            list(pool.map(client.post, distinct))
        client.delete(sha256(distinct[0]))
    finally:
        trace = tracer.stop(client.acks)
    assert trace.injected() == 0
    problems = trace.violations(client.acks)
    assert not problems, "\n".join(problems)
    assert len(client.acks) == 29  # the check looked at every answer


@WORKERS
@pytest.mark.parametrize("size, inject", [
    (5000, "syncfs:retval=0:when=2+"),  # small: one job, group commit (stor.disk.small)
    (2 * 1024 * 1024, "fsync:retval=0:when=1"),  # streaming: fsync file by file
])
def test_the_check_catches_one_suppressed_fsync(stor_process, tmp_path, workers, size, inject):
    """Without this the check could pass by seeing nothing: a flush stor counts on is
    made to do nothing (and say 0), from outside the process.  For a small upload
    that is the group commit's second ``syncfs`` (each thread's 2nd on, which is the
    round after the renames: a ``syncfs`` covers every earlier change, so
    suppressing the first alone would rightly go unnoticed); for a streaming one
    the first fsync of each thread."""
    stor = stor_process(workers)
    client = Client(stor)
    for _ in range(8):  # the disk pools' threads exist, in every worker
        client.post(os.urandom(1000))
    tracer = Tracer(stor, tmp_path / "trace", inject=inject)
    try:
        client.acks.clear()
        client.post(os.urandom(size))
    finally:
        trace = tracer.stop(client.acks)
    assert trace.injected() >= 1
    problems = trace.violations(client.acks)
    assert problems, "a suppressed flush went unnoticed"


def test_a_process_killed_between_rename_and_directory_fsync_then_restarted(stor_process,
                                                                            tmp_path):
    """The renames of an upload are done, the fsync of their directory (or, for a
    small upload, the group commit's ``syncfs`` after them, on the renamed file) is
    where stor dies (SIGKILL injected from outside at that very call).  Restarted on the same
    storages, its answer to the same upload (200, a duplicate) must not count on
    the entries the dead process never made durable."""
    first = stor_process()
    storages = first.extra["storages"]
    data = os.urandom(6000)
    finals = sorted(layout.file_path(s, sha256(data)) for s in storages)
    leaves = sorted({os.path.dirname(final) for final in finals})
    log = tmp_path / "kill.log"
    with open(log, "w") as err:
        killer = subprocess.Popen(["strace", "-f", "-o", str(tmp_path / "kill.trace"),
                                   *[arg for path in leaves + finals for arg in ("-P", path)],
                                   "-e", "trace=fsync,syncfs",
                                   "-e", "inject=fsync,syncfs:signal=KILL",
                                   "-p", str(first.popen.pid)], stderr=err)
    try:
        deadline = time.monotonic() + 15
        while f"Process {first.popen.pid} attached" not in log.read_text():
            # else the upload may be done before it: a duplicate fsyncs nothing it knows
            assert killer.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        while killer.poll() is None and first.popen.poll() is None:
            try:
                call(first.port, "POST", f"/{sha256(data)}", data, AUTH_HEADER)
            except (OSError, http.client.HTTPException):
                pass  # it died mid-answer, as planned
            assert time.monotonic() < deadline, "stor was not killed at the directory fsync"
    finally:
        first.popen.wait(15)
        killer.wait(15)
    placed = [s for s in storages if os.path.exists(layout.file_path(s, sha256(data)))]
    assert len(placed) >= 1, "killed before its rename: nothing to check"
    second = stor_process(storage_pairs=[storages[0:2], storages[2:4]], delete_auth=DELETER)
    second.extra["storages"] = storages
    tracer = Tracer(second, tmp_path / "trace")
    client = Client(second)
    try:
        client.post(data)
    finally:
        trace = tracer.stop(client.acks)
    assert trace.injected() == 0
    problems = trace.violations(client.acks)
    assert not problems, "\n".join(problems)


def test_a_worker_killed_between_rename_and_directory_fsync_its_sibling_answers(stor_process,
                                                                                tmp_path):
    """Case 2 with ``--workers 2``: one worker dies at the fsync of the directories its
    renames went into (SIGKILL injected from outside at that very call); its sibling,
    which never saw that upload, answers the same upload at once (200, a duplicate),
    and so does the worker started in the dead one's place.  Neither may count on
    entries the dead worker never made durable."""
    stor = stor_process(["--workers", "2"], delete_auth=DELETER)
    storages = stor.extra["storages"]
    data = os.urandom(6000)
    workers = serving_pids(stor)
    assert len(workers) == 2, workers
    finals = sorted(layout.file_path(s, sha256(data)) for s in storages)
    leaves = sorted({os.path.dirname(final) for final in finals})
    log = tmp_path / "kill.log"
    with open(log, "w") as err:
        killer = subprocess.Popen(
            ["strace", "-f", "-o", str(tmp_path / "kill.trace"),
             *[arg for path in leaves + finals for arg in ("-P", path)],
             "-e", "trace=fsync,syncfs", "-e", "inject=fsync,syncfs:signal=KILL",
             *[arg for pid in workers for arg in ("-p", str(pid))]], stderr=err)
    try:
        deadline = time.monotonic() + 15
        while not all(f"Process {pid} attached" in log.read_text() for pid in workers):
            assert killer.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        while all(pid_alive(pid) for pid in workers):
            try:
                call(stor.port, "POST", f"/{sha256(data)}", data, AUTH_HEADER)
            except (OSError, http.client.HTTPException):
                while all(pid_alive(pid) for pid in workers):  # dying: post no duplicate
                    assert time.monotonic() < deadline, "the killed worker did not die"
                    time.sleep(0.01)  # (its sibling's duplicate check would be killed too)
            assert time.monotonic() < deadline, "no worker was killed at the directory fsync"
    finally:
        killer.terminate()
        try:
            killer.wait(5)
        except subprocess.TimeoutExpired:
            killer.kill()  # the kernel detaches its tracees
            killer.wait(5)
    alive = [pid for pid in workers if pid_alive(pid)]
    assert alive, ((tmp_path / "kill.trace").read_text()[-3000:], workers)
    sibling = str(alive[0])
    placed = [s for s in storages if os.path.exists(layout.file_path(s, sha256(data)))]
    assert len(placed) >= 1, "killed before its rename: nothing to check"
    deadline = time.monotonic() + 30
    while len([p for p in serving_pids(stor) if pid_alive(p)]) < 2:  # the dead one restarted
        assert time.monotonic() < deadline, "the dead worker was not restarted"
        time.sleep(0.05)
    tracer = Tracer(stor, tmp_path / "trace")
    client = Client(stor)
    try:
        while sibling not in client.workers or len(client.acks) < 4:
            assert client.post(data) == 200  # whichever worker the kernel hands it to
            assert len(client.acks) < 40, (sibling, client.workers)
    finally:
        trace = tracer.stop(client.acks)
    assert trace.injected() == 0
    problems = trace.violations(client.acks)
    assert not problems, "\n".join(problems)
