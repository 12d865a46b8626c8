"""Health checks as an operator and a load balancer see them (docs/SPEC.md §1, §9; issue 11).

One dead disk must not take a host out: ``/status`` keeps the old service's
meaning (503 when any storage fails) while ``/health/ready`` stays 200 as
long as every pair can serve and one writable pair can take files, and
turns 503 the moment a graceful stop begins.  ``/metrics`` carries the
storage gauges and the counters that were only in statsite.
"""

import errno
import json
import time
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from support.helpers import AUTH, raw_request, remove_storage, sha256
from support.harness import AUTH_HEADER, request, wait_for
from stor.core import layout

DATA = b"health check\n" * 100
SHA = sha256(DATA)


def remove(storage: str, how: str) -> None:
    """The disk went away: its directory gone, or something else in its place."""
    remove_storage(storage)
    if how == "file":
        Path(storage).write_text("not a storage\n")


REASON = {"rmtree": "does not exist", "file": "is not a directory"}


async def get(server: Any, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], bytes]:
    r, body = await raw_request("GET", server.at(path), headers)
    return r.code, {k.decode().lower(): v[0].decode()
                    for k, v in r.headers.getAllRawHeaders()}, body


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus page: (name, labels) → value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def metrics(server: Any) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    code, _, body = await get(server, "/metrics")
    assert code == 200
    return body.decode(), metric_samples(body.decode())


def storage_label(name: str, storage: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset({("storage", storage)}))


# -- one disk of four gone ----------------------------------------------------------

@pytest.mark.parametrize("how", ["rmtree", "file"])
@pytest_twisted.ensureDeferred
async def test_one_storage_of_four_gone_fails_status_but_not_readiness(
        server, storage_dirs, how):
    storages = [s for pair in storage_dirs for s in pair]
    gone = storages[1]
    assert (await get(server, "/status"))[0] == 200
    remove(gone, how)

    code, headers, body = await get(server, "/status")
    assert code == 503  # the old meaning: any failing storage
    assert body.decode() == f"{gone}: {REASON[how]}\n"
    assert headers["content-type"].startswith("text/plain")

    assert (await get(server, "/health/ready"))[:3:2] == (200, b"OK\n")
    assert (await get(server, "/health/live"))[:3:2] == (200, b"OK\n")

    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)  # the healthy pair takes it
    assert r.code == 201
    assert all(not p.startswith(gone + "/") for p in json.loads(await r.text()))


@pytest_twisted.ensureDeferred
async def test_status_as_json_names_the_missing_storage_with_a_reason(server, storage_dirs):
    storages = [s for pair in storage_dirs for s in pair]
    gone = storages[2]
    remove(gone, "rmtree")
    code, headers, body = await get(server, "/status", {"Accept": "application/json"})
    assert code == 503
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["ok"] is False
    assert [s["path"] for s in doc["storages"]] == storages
    by_path = {s["path"]: s for s in doc["storages"]}
    assert by_path[gone]["ok"] is False
    assert by_path[gone]["reason"] == "does not exist"
    assert by_path[gone]["free_bytes"] is None
    for storage in storages:
        if storage != gone:
            entry = by_path[storage]
            assert entry["ok"] is True and entry["reason"] is None, entry
            assert isinstance(entry["free_bytes"], int)
            # statvfs of a filesystem others write to as well: close, not equal
            assert abs(entry["free_bytes"] - _free(storage)) < 256 * 2**20, entry
            assert entry["writable"] is True


def _free(storage: str) -> int:
    st = os.statvfs(storage)
    return st.f_bavail * st.f_frsize


@pytest_twisted.ensureDeferred
async def test_status_as_json_when_all_is_well_is_200_and_plain_status_stays_ok(
        start_server, config_dict, storage_dirs):
    config_dict["writable_pairs_regex"] = "data[34]$"  # only the second pair takes files
    server = await start_server(config_dict)
    code, _, body = await get(server, "/status", {"Accept": "text/html, application/json;q=0.9"})
    assert code == 200
    doc = json.loads(body)
    assert doc["ok"] is True
    assert [(s["ok"], s["writable"]) for s in doc["storages"]] == [
        (True, False), (True, False), (True, True), (True, True)]
    assert (await get(server, "/status"))[:3:2] == (200, b"OK")  # the old body, byte for byte


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_missing_storage_down_and_the_others_up(start_server, config_dict,
                                                                      storage_dirs):
    server = await start_server({**config_dict, "probe_period": 0.1})
    storages = [s for pair in storage_dirs for s in pair]
    gone = storages[0]
    remove(gone, "rmtree")
    text, samples = await metrics(server)
    assert f'stor_storage_up{{storage="{gone}"}} 0.0\n' in text
    for storage in storages[1:]:
        assert f'stor_storage_up{{storage="{storage}"}} 1.0\n' in text
        assert samples[storage_label("stor_storage_free_bytes", storage)] > 0
    assert storage_label("stor_storage_free_bytes", gone) not in samples  # nothing to measure
    os.mkdir(gone)  # the disk is back: a scrape after its next probe says so
    for _ in range(100):
        text, _ = await metrics(server)
        if f'stor_storage_up{{storage="{gone}"}} 1.0\n' in text:
            break
        await deferLater(reactor, 0.05)
    assert f'stor_storage_up{{storage="{gone}"}} 1.0\n' in text


# -- not ready ------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_both_members_of_a_pair_gone_is_not_ready_with_reasons(server, storage_dirs):
    a, b = storage_dirs[0]
    remove(a, "rmtree")
    remove(b, "file")
    code, headers, body = await get(server, "/health/ready")
    assert code == 503
    assert headers["content-type"].startswith("text/plain")
    assert body.decode().splitlines() == [
        f"pair {a} {b}: no usable member",
        f"{a}: does not exist",
        f"{b}: is not a directory",
    ]
    assert (await get(server, "/health/live"))[0] == 200  # alive: do not restart it


@pytest_twisted.ensureDeferred
async def test_no_writable_pair_healthy_on_both_members_is_not_ready(server, storage_dirs):
    (a, _), (_, d) = storage_dirs
    remove(a, "rmtree")
    remove(d, "rmtree")
    code, _, body = await get(server, "/health/ready")
    assert code == 503
    assert body.decode().splitlines() == [
        "no writable pair has both members usable",
        f"{a}: does not exist",
        f"{d}: does not exist",
    ]


@pytest_twisted.ensureDeferred
async def test_a_healthy_pair_that_takes_no_files_does_not_make_the_host_ready(
        start_server, config_dict, storage_dirs):
    config_dict["writable_pairs_regex"] = "data[34]$"
    server = await start_server(config_dict)
    assert (await get(server, "/health/ready"))[0] == 200
    gone = storage_dirs[1][0]
    remove(gone, "rmtree")
    code, _, body = await get(server, "/health/ready")
    assert code == 503
    assert body.decode().splitlines() == [
        "no writable pair has both members usable", f"{gone}: does not exist"]
    r, _ = await raw_request("HEAD", server.at("/health/ready"))
    assert r.code == 503


# -- counters that were only in statsite ----------------------------------------------

def uploads(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], outcome: str) -> float:
    return samples.get(("stor_uploads_total", frozenset({("outcome", outcome)})), 0.0)


@pytest_twisted.ensureDeferred
async def test_refused_uploads_are_counted_by_outcome_on_metrics(start_server, config_dict):
    config_dict["max_upload_size"] = 4096
    server = await start_server(config_dict)
    _, before = await metrics(server)
    assert uploads(before, "bad_sha") == uploads(before, "too_large") == 0.0

    r = await treq.post(server.at(SHA), data=b"not the body of that sha", auth=AUTH)
    assert r.code == 412
    big = os.urandom(5000)
    r = await treq.post(server.at(sha256(big)), data=big, auth=AUTH)
    assert r.code == 413
    r = await treq.post(server.at("not-a-sha"), data=DATA, auth=AUTH)
    assert r.code == 412
    r = await treq.post(server.at(SHA), data=DATA, auth=("writer", "wrong"))
    assert r.code == 401
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 201
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 200

    _, after = await metrics(server)
    assert {o: uploads(after, o) for o in ("bad_sha", "too_large", "malformed_sha",
                                           "unauthorized", "stored", "duplicate")} == {
        "bad_sha": 1.0, "too_large": 1.0, "malformed_sha": 1.0, "unauthorized": 1.0,
        "stored": 1.0, "duplicate": 1.0}


@pytest_twisted.ensureDeferred
async def test_no_space_is_counted_on_metrics(start_server, config_dict):
    config_dict["writable_pairs_regex"] = "^no storage matches this$"
    server = await start_server(config_dict)
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 507
    _, samples = await metrics(server)
    assert uploads(samples, "no_space") == 1.0


@pytest_twisted.ensureDeferred
async def test_a_repair_is_counted_on_metrics(server, storage_dirs):
    lone = layout.file_path(storage_dirs[0][0], SHA)  # its twin lost: waiting for repair
    os.makedirs(os.path.dirname(lone))
    Path(lone).write_bytes(DATA)
    twin = layout.file_path(storage_dirs[0][1], SHA)
    r, body = await raw_request("GET", server.at(SHA))
    assert (r.code, body) == (200, DATA)
    done = ("stor_repairs_total", frozenset({("outcome", "done")}))
    await eventually(lambda: metrics(server), lambda m: m[1].get(done) == 1.0,
                     "the repair counted")
    assert Path(twin).read_bytes() == DATA


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_an_s3_read_error_is_counted_on_metrics(start_server, config_dict, moto):
    from support.ports import refused_port

    config_dict.update({"s3_enabled": True, "s3_credentials": {
        "access_key": moto.access_key, "secret_key": moto.secret_key,
        "host": f"http://127.0.0.1:{refused_port()}"}, "s3_connect_timeout": 2})
    server = await start_server(config_dict)
    r = await treq.post(server.at(SHA), data=DATA, auth=AUTH)
    assert r.code == 201
    r, body = await raw_request("GET", server.at(SHA))
    assert (r.code, body) == (200, DATA)  # served locally all the same
    _, samples = await metrics(server)
    assert samples.get(("stor_s3_errors_total", frozenset())) == 1.0


async def eventually(fetch: Any, good: Any, what: str, timeout: float = 10.0) -> Any:
    """Await ``fetch()`` until ``good(value)`` holds (bounded); the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if good(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)


# -- a real stor process: start-up and graceful stop ----------------------------------

@pytest.mark.acceptance('stor-process')
def test_missing_storages_are_logged_at_start_one_line_each(stor_process, tmp_path) -> None:
    present = [str(tmp_path / f"disk{i}") for i in range(2)]
    for d in present:
        os.mkdir(d)
    missing = [str(tmp_path / "never-mounted1"), str(tmp_path / "never-mounted2")]
    stor = stor_process(storage_pairs=[[present[0], missing[0]], [present[1], missing[1]]],
                        lock_dir=str(tmp_path / "locks"))
    for path in missing:
        lines = wait_for(lambda: [l for l in stor.out.splitlines() if path in l],
                         f"a line about {path}", stor)
        assert len(lines) == 1, lines
        assert "#warn]" in lines[0], lines[0]
        assert f"storage {path} does not exist: it gets no new files" in lines[0]
    assert not [l for l in stor.out.splitlines() if any(p + " " in l for p in present)]
    assert request(stor.port, "GET", "/health/ready").status == 503  # no pair is whole
    assert request(stor.port, "GET", "/health/live").status == 200


def refused(port: int) -> bool:
    """Whether a new connection to ``port`` is refused (nothing listens)."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def begin(port: int, path: str) -> socket.socket:
    """A GET whose request line is sent and whose headers are not finished yet."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"GET {path} HTTP/1.1\r\n".encode())
    return s


def finish(s: socket.socket) -> tuple[bytes, bytes]:
    """End the headers and read the whole answer (the server closes after it)."""
    s.sendall(b"Host: stor\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def in_flight(port: int) -> float:
    """stor's count of requests in flight, less the scrape asking."""
    text = request(port, "GET", "/metrics").body.decode()
    return metric_samples(text)[("stor_http_requests_in_flight", frozenset())] - 1


@pytest.mark.acceptance('stor-process')
def test_ready_answers_503_from_the_moment_a_graceful_stop_begins(stor_process, tmp_path) -> None:
    """On SIGTERM the listener closes at once (new connections are refused) and requests
    already begun are answered: a readiness check among them says 503 ``stopping``, a
    liveness check 200 (the process still serves what it has)."""
    stor = stor_process(lock_dir=str(tmp_path / "locks"))
    body = os.urandom(64 * 1024)
    upload = socket.create_connection(("127.0.0.1", stor.port), timeout=30)
    upload.sendall((f"POST /{sha256(body)} HTTP/1.1\r\nHost: stor\r\n"
                    f"Authorization: {AUTH_HEADER}\r\nContent-Length: {len(body)}\r\n\r\n"
                    ).encode() + body[:1000])  # holds the stop open until it is finished
    assert request(stor.port, "GET", "/health/ready").status == 200
    ready, live = begin(stor.port, "/health/ready"), begin(stor.port, "/health/live")
    wait_for(lambda: in_flight(stor.port) >= 3, "three requests in flight", stor)

    stor.popen.send_signal(15)
    wait_for(lambda: "waiting up to" in stor.out, "the graceful stop to begin", stor)
    wait_for(lambda: refused(stor.port), "new connections to be refused", stor)

    head, text = finish(ready)
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert text == b"stopping\n"
    assert b"\r\nconnection: close" in head.lower()
    head, text = finish(live)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert text == b"OK\n"

    upload.sendall(body[1000:])  # the upload in flight still completes
    answer = b""
    while chunk := upload.recv(65536):
        answer += chunk
    upload.close()
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    assert stor.popen.wait(30) == 0, stor.describe()
