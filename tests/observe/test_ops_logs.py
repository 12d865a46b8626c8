"""Logs as an operator reads them: one access event per request, JSON or text."""

import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import endpoints, reactor
from twisted.logger import LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from support.helpers import sha256
from support.harness import AUTH_HEADER, request
from stor.disk.diskpool import DiskPool
from stor.disk.locks import ShaLocks
from stor.http.app import StorApp
from stor.http.site import StorSite
from stor.observe.access import emit_access
from stor.observe.logs import format_json_line, format_text_line
from stor.disk.local import LocalStore
from stor.store.store import Store

COMBINED_LOG = re.compile(r'"(GET|POST|HEAD) /\S* HTTP/1\.[01]" \d{3}')


@pytest.mark.acceptance('stor-process')
def test_json_log_has_one_access_line_per_request(stor_process) -> None:
    stor = stor_process(["--log-format", "json"])
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    auth = {"Authorization": AUTH_HEADER}
    made = [
        ("GET", "/status", None, {}, 200),
        ("POST", f"/{sha}", data, auth, 201),
        ("POST", f"/{sha}", data, auth, 200),
        ("GET", f"/{sha.upper()}", None, {"User-Agent": "ops-test"}, 200),
        ("HEAD", f"/{sha}", None, {}, 200),
        ("GET", "/" + "ab" * 32, None, {}, 404),
        ("GET", "/not-a-sha", None, {}, 404),
        ("POST", f"/{'cd' * 32}", b"x", {}, 401),
    ]
    for method, path, body, headers, status in made:
        assert request(stor.port, method, path, body, headers).status == status
    assert stor.terminate() == 0

    records = stor.json_lines()  # every line of the log is JSON
    assert all({"time", "level", "namespace", "pid", "message"} <= set(r) for r in records)
    access = stor.access()
    # the readiness poll's GET /status came first
    access = access[len(access) - len(made):]
    assert len(access) == len(made), json.dumps(access, indent=1)
    for record, (method, path, body, headers, status) in zip(access, made):
        assert (record["method"], record["path"], record["status"]) == (method, path, status)
        assert record["peer"] == "127.0.0.1" and record["completed"] is True
        assert record["duration_ms"] >= 0
    stored, get = access[1], access[3]
    assert stored["sha"] == sha and stored["bytes_received"] == len(data)
    assert get["sha"] == sha and get["bytes_sent"] == len(data)
    assert get["user_agent"] == "ops-test"
    assert access[4]["bytes_sent"] == 0  # HEAD
    assert access[6]["sha"] is None
    assert not any(COMBINED_LOG.search(r["message"]) for r in records)


@pytest.mark.acceptance('stor-process')
def test_text_log_has_access_lines_and_no_combined_log(stor_process) -> None:
    stor = stor_process()
    assert request(stor.port, "GET", "/" + "ef" * 32).status == 404
    assert stor.terminate() == 0
    lines = [l for l in stor.out.splitlines() if "[stor.access#info]" in l]
    assert any(f"GET /{'ef' * 32} 404 sent=" in l and "peer=127.0.0.1" in l for l in lines)
    assert not COMBINED_LOG.search(stor.out)


TEXT_LINE = re.compile(r"^\S+ \[(\d+)\] \[[^\]]*\] ")


@pytest.mark.acceptance('stor-process')
def test_text_log_lines_carry_the_pid(stor_process) -> None:
    stor = stor_process()
    assert request(stor.port, "GET", "/status").status == 200
    assert stor.terminate() == 0
    lines = stor.out.splitlines()
    assert len(lines) > 3
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match and int(match.group(1)) == stor.popen.pid, line


def test_a_text_traceback_stays_under_its_line() -> None:
    try:
        raise RuntimeError("disk controller on fire")
    except RuntimeError:
        failure = Failure()
    event = {"log_format": "request failed", "log_failure": failure, "log_time": 1e9,
             "log_namespace": "stor.test", "log_level": LogLevel.critical}
    first, *rest = format_text_line(event).splitlines()
    stamp, _, text = first.partition(" ")
    assert stamp.startswith("2001-09-0") and " " not in stamp  # local time, whatever TZ says
    assert text == f"[{os.getpid()}] [stor.test#critical] request failed"
    assert rest and all(line.startswith("\t") for line in rest)
    assert any("disk controller on fire" in line for line in rest)
    assert format_text_line({"log_time": 1e9}) == ""  # nothing to say: no line


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every event logged in this process during the test, as JSON log lines."""
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(format_json_line(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class BrokenCache:
    """A lookup cache failing in a way nobody planned for."""

    def get(self, sha: str) -> Any:
        raise RuntimeError("disk controller on fire")

    def peek(self, sha: str) -> None:
        return None  # nothing remembered in this process: the fast lane leaves it to get

    def put(self, sha: str, path: str) -> None:
        pass

    def drop(self, sha: str) -> None:
        pass


@pytest_twisted.async_yield_fixture
async def broken_site(storage_dirs, tmp_path):
    """A stor site whose store was given a broken collaborator."""
    pool = DiskPool(reactor)
    local = LocalStore([tuple(p) for p in storage_dirs], pool, check_mounts=False)
    store = Store(local, ShaLocks(str(tmp_path / "locks")), cache=BrokenCache())
    site = StorSite(StorApp(store), access=emit_access)
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    yield f"http://127.0.0.1:{port.getHost().port}"
    await port.stopListening()
    pool.stop()


@pytest_twisted.ensureDeferred
async def test_an_unexpected_error_logs_its_traceback_once(broken_site, log_lines) -> None:
    sha = sha256(b"anything")
    response = await treq.get(f"{broken_site}/{sha}")
    assert response.code == 500
    await response.content()

    records = [json.loads(line) for line in log_lines]
    assert all(line.count("\n") == 1 and line.endswith("\n") for line in log_lines)
    with_traceback = [r for r in records if "traceback" in r]
    assert len(with_traceback) == 1, records
    assert "disk controller on fire" in with_traceback[0]["traceback"]
    assert with_traceback[0]["level"] == "critical"
    assert sum(line.count("Traceback (most recent call last)") for line in log_lines) == 1
    access = [r for r in records if r["namespace"] == "stor.access"]
    assert [(r["status"], r["sha"]) for r in access] == [(500, sha)]
