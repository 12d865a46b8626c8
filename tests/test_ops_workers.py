"""``--workers N``: N processes answer on one socket; a dead one is replaced."""

import hashlib
import os
import signal

from prometheus_client.parser import text_string_to_metric_families

from ops_peer import AUTH_HEADER, Stor, children, pid_alive, request, wait_for


def worker_pids_seen(stor: Stor, want: int, tries: int = 400) -> set[int]:
    """The Stor-Worker pids answering GET /status, one new connection each."""
    seen: set[int] = set()
    for _ in range(tries):
        answer = request(stor.port, "GET", "/status")
        assert answer.status == 200
        seen.add(int(answer.headers["stor-worker"]))
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

    # metrics are the sum over both workers
    families = {f.name: f for f in text_string_to_metric_families(
        request(stor.port, "GET", "/metrics").body.decode())}
    statuses = sum(s.value for s in families["stor_http_requests"].samples
                   if s.name == "stor_http_requests_total" and s.labels["method"] == "GET")
    assert statuses >= len(seen) + 20

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(victim), "the killed worker to die", stor)
    replaced = wait_for(lambda: len(c := children(stor.popen.pid)) == 2 and victim not in c and c,
                        "a new worker", stor)
    assert "was killed by SIGKILL; restarting it" in stor.out, stor.describe()
    wait_for(lambda: worker_pids_seen(stor, 2, tries=50) == set(replaced),
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
