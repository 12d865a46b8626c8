"""The per-worker process_* collector, on real processes and the real /proc."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stor.process.worker_metrics import (
    PARENT_ENV, SLOT_ENV, WorkerProcesses, announce, register_worker_processes,
)


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two child processes of this one (as workers are of their parent)."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    yield procs
    for p in procs:
        p.kill()
        p.wait()


def scrape(registry: CollectorRegistry) -> dict[str, dict[str, tuple[str, float]]]:
    found: dict[str, dict[str, tuple[str, float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            found.setdefault(s.name, {})[s.labels["pid"]] = (s.labels["worker"], s.value)
    return found


@pytest.mark.acceptance('process')
def test_reports_the_parent_and_its_live_children_only(tmp_path: Path, sleepers) -> None:
    a, b = sleepers
    announce(str(tmp_path), "0", a.pid)
    announce(str(tmp_path), "1", b.pid)
    announce(str(tmp_path), "2", 1)  # init: alive, but not one of ours
    registry = CollectorRegistry()
    registry.register(WorkerProcesses(str(tmp_path), os.getpid()))

    seen = scrape(registry)
    me = str(os.getpid())
    expected = {me: "parent", str(a.pid): "0", str(b.pid): "1"}
    for name in ("process_resident_memory_bytes", "process_virtual_memory_bytes",
                 "process_cpu_seconds_total", "process_open_fds", "process_max_fds",
                 "process_start_time_seconds"):
        assert {pid: worker for pid, (worker, _) in seen[name].items()} == expected, name
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(50)]
    try:
        more = scrape(registry)["process_open_fds"][me][1]
    finally:
        for fd in extra:
            os.close(fd)
    assert more - seen["process_open_fds"][me][1] == 50
    assert seen["process_start_time_seconds"][str(a.pid)][1] >= \
        seen["process_start_time_seconds"][me][1]

    b.kill()
    b.wait()  # reaped: gone
    assert set(scrape(registry)["process_open_fds"]) == {me, str(a.pid)}


@pytest.mark.acceptance('process')
def test_a_replaced_worker_takes_its_slot(tmp_path: Path, sleepers) -> None:
    a, b = sleepers
    announce(str(tmp_path), "0", a.pid)
    announce(str(tmp_path), "0", b.pid)  # the replacement of worker 0
    registry = CollectorRegistry()
    registry.register(WorkerProcesses(str(tmp_path), os.getpid()))
    seen = scrape(registry)["process_open_fds"]
    assert {pid: worker for pid, (worker, _) in seen.items()} == {str(os.getpid()): "parent",
                                                                 str(b.pid): "0"}


def test_registered_only_in_a_worker(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    assert register_worker_processes(registry, str(tmp_path), environ={}) is False
    assert os.listdir(tmp_path) == [] and scrape(registry) == {}

    env = {SLOT_ENV: "3", PARENT_ENV: str(os.getppid())}
    assert register_worker_processes(registry, str(tmp_path), environ=env) is True
    assert os.listdir(tmp_path) == ["worker-3.pid"]
    seen = scrape(registry)["process_resident_memory_bytes"]
    assert seen[str(os.getpid())][0] == "3"
