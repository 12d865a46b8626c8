"""``--workers N``: N processes answer on one socket; a dead one is replaced."""

import hashlib
import os
import re
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.harness import AUTH_HEADER, Stor, children, pid_alive, request, wait_for

pytestmark = pytest.mark.acceptance('stor-process')


def worker_pids_seen(stor: Stor, want: int, tries: int = 25) -> set[int]:
    """The Stor-Worker pids answering GET /status.

    Each try opens 16 connections at once before asking on any of them: the
    kernel hands a burst of connections to whichever workers are waiting,
    where one connection at a time may go to the same worker every time.
    """
    seen: set[int] = set()
    for _ in range(tries):
        socks = [socket.create_connection(("127.0.0.1", stor.port), timeout=10)
                 for _ in range(16)]
        for sock in socks:
            with sock:
                sock.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                head = answer.split(b"\r\n\r\n", 1)[0].decode()
                assert head.startswith("HTTP/1.1 200 "), head
                seen.add(int(next(line.split(":", 1)[1] for line in head.split("\r\n")
                                  if line.lower().startswith("stor-worker:"))))
        if len(seen) >= want:
            break
    return seen


def test_two_workers_answer_and_a_killed_one_is_replaced(stor_process, tmp_path) -> None:
    stor = stor_process(["--workers", "2"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    workers = children(stor.popen.pid)
    assert len(workers) == 2 and stor.popen.pid not in workers

    seen = worker_pids_seen(stor, 2)
    assert seen == set(workers), f"answered by {seen}, workers are {workers}"

    # an upload through one worker is found by the other
    data = os.urandom(10_000)
    sha = hashlib.sha256(data).hexdigest()
    assert request(stor.port, "POST", f"/{sha}", data, {"Authorization": AUTH_HEADER}).status == 201
    for _ in range(20):
        assert request(stor.port, "GET", f"/{sha}").body == data

    # metrics are the sum over both workers (each worker's figures at most a second old)
    def get_requests() -> float:
        families = {f.name: f for f in text_string_to_metric_families(
            request(stor.port, "GET", "/metrics").body.decode())}
        return sum(s.value for s in families["stor_http_requests"].samples
                   if s.name == "stor_http_requests_total" and s.labels["method"] == "GET")

    wait_for(lambda: get_requests() >= len(seen) + 20, "both workers' requests in /metrics",
             stor, timeout=5)

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim), "the killed worker to die", stor)
    replaced = wait_for(lambda: len(c := children(stor.popen.pid)) == 2 and victim not in c and c,
                        "a new worker", stor)
    assert "was killed by SIGKILL; restarting it" in stor.out, stor.describe()
    wait_for(lambda: worker_pids_seen(stor, 2, tries=5) == set(replaced),
             "the new worker to answer", stor)

    assert stor.terminate() == 0, stor.describe()
    assert not [p for p in replaced if pid_alive(p)]
    assert "all workers have stopped" in stor.out


def test_workers_do_not_outlive_a_killed_parent(stor_process) -> None:
    stor = stor_process(["--workers", "2"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    workers = children(stor.popen.pid)
    assert len(workers) == 2
    stor.popen.kill()
    stor.popen.wait(10)
    wait_for(lambda: not any(pid_alive(p) for p in workers), "the workers to stop")


# -- what an operator reads: log lines and /metrics of every process ----------

LINE = re.compile(r"^(\S+) \[(\d+)\] \[([^\]]*)\] (.*)$")
INTERNALS = ("<class ", " object at 0x", "_NeverServed", "_ChildNotices", "stor-workers-")
PROCESS_METRICS = ("process_resident_memory_bytes", "process_cpu_seconds_total",
                   "process_open_fds", "process_start_time_seconds")


def text_lines(stor: Stor) -> list[re.Match[str]]:
    """Every log line of stdout, parsed (fails on one without a pid); tracebacks' lines skipped."""
    parsed = []
    for line in stor.out.splitlines():
        if line.startswith(("\t", " ")):
            continue  # a traceback's continuation
        match = LINE.match(line)
        assert match, f"no pid in log line {line!r}"
        parsed.append(match)
    return parsed


def test_every_text_log_line_names_its_process_and_no_internal_object(stor_process) -> None:
    stor = stor_process(["--workers", "2"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    workers = children(stor.popen.pid)
    answer = request(stor.port, "GET", "/" + "ab" * 32)
    assert answer.status == 404
    assert stor.terminate() == 0, stor.describe()

    lines = text_lines(stor)
    pids = {int(m.group(2)) for m in lines}
    assert pids == {stor.popen.pid, *workers}, stor.describe()
    access = [m for m in lines if m.group(3) == "stor.access#info" and "ab" * 32 in m.group(4)]
    assert [int(m.group(2)) for m in access] == [int(answer.headers["stor-worker"])]
    for worker in workers:  # each worker's own start-up, under its own pid
        assert any(int(m.group(2)) == worker and m.group(4).startswith("serving on")
                   for m in lines), stor.describe()
    for internal in INTERNALS:
        assert internal not in stor.out, f"{internal!r} in the log:\n{stor.out}"


def test_every_json_log_line_names_its_process(stor_process) -> None:
    stor = stor_process(["--workers", "2", "--log-format", "json"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    workers = children(stor.popen.pid)
    assert stor.terminate() == 0, stor.describe()
    records = stor.json_lines()
    assert {r["pid"] for r in records} == {stor.popen.pid, *workers}
    for internal in INTERNALS:
        assert not [r for r in records if internal in r["message"]], internal


def process_samples(stor: Stor) -> dict[str, dict[int, tuple[str, float]]]:
    """``{metric: {pid: (worker label, value)}}`` of the process_* series on GET /metrics."""
    found: dict[str, dict[int, tuple[str, float]]] = {name: {} for name in PROCESS_METRICS}
    text = request(stor.port, "GET", "/metrics").body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found:
                pid = int(sample.labels["pid"])
                assert pid not in found[sample.name], f"{sample.name} twice for {pid}"
                found[sample.name][pid] = (sample.labels["worker"], sample.value)
    return found


def test_metrics_show_process_figures_of_every_worker(stor_process) -> None:
    stor = stor_process(["--workers", "2"])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers to serve", stor)
    parent = stor.popen.pid
    workers = children(parent)
    now = time.time()

    for _ in range(6):  # whichever worker answers, every process is there
        samples = process_samples(stor)
        for name, by_pid in samples.items():
            assert set(by_pid) == {parent, *workers}, (name, by_pid)
            assert by_pid[parent][0] == "parent"
            assert sorted(by_pid[w][0] for w in workers) == ["0", "1"]
        for pid in (parent, *workers):
            assert samples["process_resident_memory_bytes"][pid][1] > 10e6  # a Python process
            assert samples["process_open_fds"][pid][1] >= 3
            assert samples["process_cpu_seconds_total"][pid][1] > 0
            assert now - 120 < samples["process_start_time_seconds"][pid][1] <= now + 1

    victim = workers[0]
    victim_slot = process_samples(stor)["process_open_fds"][victim][0]
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: len(c := children(parent)) == 2 and victim not in c and c,
                        "a new worker", stor)
    (newcomer,) = set(replaced) - set(workers)
    wait_for(lambda: newcomer in process_samples(stor)["process_open_fds"],
             "the new worker's figures", stor)
    for _ in range(6):
        by_pid = process_samples(stor)["process_resident_memory_bytes"]
        assert set(by_pid) == {parent, *replaced}
        assert by_pid[newcomer][0] == victim_slot
