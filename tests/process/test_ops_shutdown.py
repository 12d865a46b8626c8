"""Graceful stop: SIGTERM lets requests in flight finish, then stor exits 0."""

import errno
import hashlib
import os
import socket
import time

import pytest

from support.harness import AUTH_HEADER, Stor, request, wait_for

pytestmark = pytest.mark.acceptance('stor-process')

BODY = os.urandom(512 * 1024)
SHA = hashlib.sha256(BODY).hexdigest()


def refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


def in_flight(stor: Stor) -> float:
    """stor's own count of requests in flight, not counting the scrape asking."""
    text = request(stor.port, "GET", "/metrics").body.decode()
    line = next(l for l in text.splitlines() if l.startswith("stor_http_requests_in_flight "))
    return float(line.split()[1]) - 1


def start_upload(stor: Stor) -> socket.socket:
    """A POST whose headers and first half are sent; the rest is up to the test."""
    s = socket.create_connection(("127.0.0.1", stor.port), timeout=30)
    head = (f"POST /{SHA} HTTP/1.1\r\nHost: stor\r\nAuthorization: {AUTH_HEADER}\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode()
    s.sendall(head + BODY[: len(BODY) // 2])
    wait_for(lambda: in_flight(stor) >= 1, "the upload to be in flight", stor)
    return s


def read_answer(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"]"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_lets_a_slow_upload_finish_then_exits_0(stor_process) -> None:
    stor = stor_process()
    upload = start_upload(stor)

    stor.popen.send_signal(signal_term())
    wait_for(lambda: "SIGTERM: stopping gracefully" in stor.out, "the stop to begin", stor)
    wait_for(lambda: refused(stor.port), "new connections to be refused", stor)
    assert stor.popen.poll() is None, "stor did not wait for the upload\n" + stor.describe()

    upload.sendall(BODY[len(BODY) // 2:])
    answer = read_answer(upload)
    upload.close()
    assert answer.startswith(b"HTTP/1.1 201 "), answer[:300]
    assert b"connection: close" in answer.lower()

    assert stor.popen.wait(30) == 0, stor.describe()
    stored = [p for s in stor.extra["storages"] for p in _dat_files(s)]
    assert len(stored) == 2 and all(open(p, "rb").read() == BODY for p in stored)
    assert "every request in flight has finished" in stor.out
    assert "Server Shut Down" in stor.out


def test_grace_period_over_cuts_the_rest_and_still_exits_0(stor_process) -> None:
    stor = stor_process(shutdown_grace_period=1)
    upload = start_upload(stor)
    began = time.monotonic()
    stor.popen.send_signal(signal_term())
    assert stor.popen.wait(30) == 0, stor.describe()
    assert 0.9 <= time.monotonic() - began < 10
    assert "grace period over: cut 1 connection(s)" in stor.out, stor.describe()
    upload.settimeout(5)
    try:
        assert upload.recv(100) == b""  # closed without an answer
    except ConnectionResetError:
        pass
    upload.close()
    assert not [p for s in stor.extra["storages"] for p in _dat_files(s)]


def test_idle_keepalive_connections_do_not_delay_the_stop(stor_process) -> None:
    import http.client

    stor = stor_process()
    conn = http.client.HTTPConnection("127.0.0.1", stor.port, timeout=10)
    conn.request("GET", "/status")
    assert conn.getresponse().read() == b"OK"  # the connection stays open, idle
    began = time.monotonic()
    assert stor.terminate() == 0, stor.describe()
    assert time.monotonic() - began < 5  # not the 30 s grace period
    conn.sock.settimeout(5)
    assert conn.sock.recv(10) == b""  # stor closed it
    conn.close()


def signal_term() -> int:
    import signal

    return signal.SIGTERM


def _dat_files(storage: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(storage) for f in files
            if f.endswith(".dat")]


def test_a_second_sigterm_stops_waiting(stor_process) -> None:
    stor = stor_process()  # grace period: the default 30 s
    upload = start_upload(stor)
    began = time.monotonic()
    stor.popen.send_signal(signal_term())
    wait_for(lambda: "waiting up to 30s for 1 request(s) in flight" in stor.out, "the wait", stor)
    stor.popen.send_signal(signal_term())
    assert stor.popen.wait(30) == 0, stor.describe()
    assert time.monotonic() - began < 10
    assert "SIGTERM again: cutting the requests still in flight" in stor.out
    upload.close()
