"""Acceptance: stor started on config files written as the old service's README and tests
write them, each ``log`` and ``statsite`` setting taking effect (issue 10).

The configs hold only the old service's keys; the listening address is given on the
command line (``--listen``), as the old tests gave ``-l http://*:$port``.  They stop
stor with SIGHUP, as the old tests did.
"""

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.logs import TcpReader, UdpReader, gelf_json
from support.harness import LOOPBACK_ANY_PORT, TWISTD, Proc, Stors, answers, request, wait_for

pytestmark = pytest.mark.acceptance('stor-process')


@pytest.fixture
def old_stor(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], tuple[Proc, int]]]:
    """Start ``twistd -n stor`` on a config of exactly the keys given (plus storages)."""
    stors = Stors(tmp_path)

    def start(config: dict[str, Any]) -> tuple[Proc, int]:
        storages = []
        for i in range(4):
            d = tmp_path / f"data{i + 1}"
            d.mkdir()
            storages.append(str(d))
        config = {"storage_pairs": [storages[0:2], storages[2:4]], **config}
        path = tmp_path / "stor.json"
        path.write_text(json.dumps(config, indent=4))
        argv = [TWISTD, "-n", "--pidfile=", "stor", "--config", str(path),
                "--listen", LOOPBACK_ANY_PORT]
        proc = stors.run(argv, "stor", config_path=path)
        port = proc.wait_port()
        wait_for(lambda: answers(port, "/") is not None, "stor to answer", proc)
        return proc, port

    try:
        yield start
    finally:
        stors.close()


def stop_as_the_old_tests_did(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGHUP)
    assert proc.popen.wait(30) == 0  # a graceful stop, as SIGTERM


def test_readme_config_with_gelf_file_and_statsite_port(old_stor, udp_reader: UdpReader,
                                                          udp_reader2: UdpReader,
                                                          tmp_path: Path) -> None:
    statsite, graylog = udp_reader, udp_reader2
    logfile = tmp_path / "stor.log"
    proc, port = old_stor({
        "statsite": {"host": "127.0.0.1", "port": statsite.port, "prefix": "stor.dev",
                     "sample_rate": 0.5},
        "writable_pairs_regex": "data[12]",
        "s3_credentials": {"access_key": "S3_ACCESS_KEY", "secret_key": "S3_SECRET_KEY",
                           "host": "S3_HOST"},
        "secret": "test secret",
        "basic_auth": "writer:writer_pass",
        "log": [
            ["Gelf", "min_level", "info",
             "socket", {"host": "127.0.0.1", "port": graylog.port, "protocol": "udp"},
             "additional_fields", {"facility": "stor"}],
            ["File", "min_level", "info", "filename", str(logfile), "mode", "append"],
        ],
    })
    missing = "/" + "0" * 64

    def get() -> None:
        assert request(port, "GET", missing).status == 404

    # statsite: the configured port, every line sampled and carrying the rate
    # (the lines of up to 50 ms share a datagram, as statsite allows)
    def line(start: bytes, what: str) -> bytes:
        datagram = statsite.until(lambda d: any(l.startswith(start) for l in d.splitlines(True)),
                                  what, poke=get)
        return next(l for l in datagram.splitlines(True) if l.startswith(start))

    counter = line(b"stor.dev.error.get.not_found_old.count:", "the not-found counter")
    assert counter == b"stor.dev.error.get.not_found_old.count:1|c|@0.5\n"
    assert line(b"stor.dev.lookup.time:", "the lookup timer").endswith(b"|ms|@0.5\n")
    assert all(l.endswith(b"|@0.5\n") for d in statsite.received for l in d.splitlines(True))

    # Graylog: GELF on the output's port, with the additional field
    access = gelf_json(graylog.until(
        lambda d: f"GET {missing} 404".encode() in d, "the access event"))
    assert access["_facility"] == "stor" and access["level"] == 6
    assert access["short_message"].startswith(f"GET {missing} 404")

    # File: written, and a new one after logrotate's SIGUSR1
    wait_for(lambda: f"GET {missing} 404" in logfile.read_text(), "the access line", proc)
    logfile.rename(tmp_path / "stor.log.1")
    proc.popen.send_signal(signal.SIGUSR1)
    wait_for(logfile.exists, "a new log file", proc)
    other = "/" + "1" * 64
    assert request(port, "GET", other).status == 404
    wait_for(lambda: f"GET {other} 404" in logfile.read_text(), "a line in the new file", proc)

    stop_as_the_old_tests_did(proc)


def test_old_tests_config_with_empty_log_and_statsite_over_tcp(old_stor, tcp_reader: TcpReader) -> None:
    proc, port = old_stor({  # t/01_upload_download.t's keys, statsite added
        "secret": "test secret",
        "basic_auth": "user:pass",
        "s3_credentials": {"access_key": "some_key", "secret_key": "another_key", "host": "host"},
        "log": [],
        "statsite": {"host": "127.0.0.1", "port": tcp_reader.port, "proto": "tcp"},
    })
    # counted whatever the storages' state (a failing /status counts no healthcheck,
    # as the old service: docs/compat-decisions.rst)
    assert request(port, "GET", "/not-a-sha").status == 404
    wait_for(lambda: b"error.get.malformed_sha.count:1|c" in tcp_reader.frames(b"\n"),
             "the malformed_sha line over TCP", proc)
    assert "config:" not in proc.out  # nothing to warn about in the old tests' config
    stop_as_the_old_tests_did(proc)
