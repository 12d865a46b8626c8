"""How much stor logs (issue 21, item 10): one line a client request at the default level,
none for the balancer's health checks, one per change of state, and no Twisted noise."""

import hashlib
import json
import os
import re

import pytest

from support.fleet import s3_keys
from support.harness import AUTH_HEADER, request, wait_for

pytestmark = pytest.mark.acceptance('memcached', 'moto', 'stor-process')

NOISE = re.compile(r"Starting factory|Stopping factory|Scheduling retry|/health/")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outbox_empty(port: int) -> bool:
    status = request(port, "GET", "/status", headers={"Accept": "application/json"})
    return json.loads(status.body).get("s3_outbox", {}).get("depth") == 0


def test_a_fixed_workload_logs_a_line_a_request_and_a_line_a_change(
        stor_process, moto, bucket, memcached) -> None:
    stor = stor_process(s3_write_through=True, memcached_servers=[f"127.0.0.1:{memcached.port}"],
                        **s3_keys(moto, bucket))
    wait_for(lambda: outbox_empty(stor.port), "the outbox's first scan", stor)
    before = len(stor.out.splitlines())
    requests = 0

    def client(method: str, path: str, body: bytes | None = None, **headers: str) -> int:
        nonlocal requests
        requests += 1
        return request(stor.port, method, path, body, headers).status

    def health_checks() -> None:  # a balancer's, every 2 s in production: none is logged
        for path in ("/health/ready", "/health/live", "/health/write"):
            request(stor.port, "GET", path)
            request(stor.port, "HEAD", path)

    files = [os.urandom(3000 + i) for i in range(20)]
    for data in files:
        assert client("POST", f"/{sha256(data)}", data, Authorization=AUTH_HEADER) == 201
        health_checks()
    for data in files[:10]:
        assert client("GET", f"/{sha256(data)}") == 200
    for i in range(5):
        assert client("GET", f"/{i:02d}" * 32) == 404
        assert client("HEAD", f"/{i + 10:02d}" * 32) == 404
    memcached.kill()  # an outage: one line when it is seen, one when it is over
    for data in files:
        assert client("GET", f"/{sha256(data)}") == 200
        health_checks()
    memcached.start()
    for data in files:
        assert client("HEAD", f"/{sha256(data)}") == 200
    wait_for(lambda: "memcached" in "".join(stor.out.splitlines()[before:][-40:])
             and outbox_empty(stor.port), "the outbox to drain", stor)
    requests += 0  # the /status of outbox_empty are client requests too: counted below

    lines = stor.out.splitlines()[before:]
    statuses = sum(1 for line in lines if "GET /status " in line)
    noise = [line for line in lines if NOISE.search(line)]
    assert noise == []
    changes = [line for line in lines if "stor.access" not in line]
    assert len(changes) <= 4, changes  # memcached down, memcached up (and nothing per file)
    assert len(lines) <= requests + statuses + 4, lines


def test_log_level_warn_keeps_only_warnings_and_errors(stor_process) -> None:
    stor = stor_process(log_level="warn")
    before = len(stor.out.splitlines())
    for i in range(5):
        assert request(stor.port, "GET", f"/{i:02d}" * 32).status == 404
    assert request(stor.port, "GET", "/status").status == 200  # the last request: its line
    lines = stor.out.splitlines()[before:]
    assert [line for line in lines if "#info]" in line] == []


def test_access_log_skip_empty_logs_every_health_check(stor_process) -> None:
    stor = stor_process(access_log_skip=[])
    wait_for(lambda: "GET /health/live 200" in stor.out, "the harness's check logged", stor)


@pytest.mark.parametrize("form, stamped", [
    (lambda path: [["File", "min_level", "info", "filename", path]], False),
    (lambda path: [["File", "min_level", "info", "filename", path, "stamp", 1]], True),
    (lambda path: {"file": {"path": path}}, True),
    (lambda path: {"file": {"path": path, "stamp": False}}, False),
])
def test_file_outputs_are_bare_as_log_dispatch_wrote_or_stamped(stor_process, tmp_path,
                                                                   form, stamped) -> None:
    path = tmp_path / "stor.log"
    stor = stor_process(log=form(str(path)))
    assert request(stor.port, "GET", "/" + "ab" * 32).status == 404
    wait_for(lambda: path.exists() and "not found" in path.read_text(), "the 404's line", stor)
    line = next(line for line in path.read_text().splitlines() if "not found" in line)
    if stamped:
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{{4}} \[\d+\] warning: "
                            rf"File '{'ab' * 32}' not found", line), line
    else:
        assert line == f"File '{'ab' * 32}' not found"
