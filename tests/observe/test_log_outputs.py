"""The ``log`` outputs as observers of this process's events: real sockets, real files.

In-process tests start :class:`~stor.observe.log_outputs.LogOutputs` in the test's
reactor and log with twisted.logger, as stor's code does; the process tests at
the end send real signals to real stor processes.
"""

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.logger import Logger

from support.logs import Datagrams, GelfAssembler, Stream
from support.ports import free_port
from support.harness import request, wait_for
from stor.config.log import parse_log
from stor.config.problems import Problems
from stor.observe.log_outputs import LineWriter, LogOutputs, build_log_outputs

log = Logger(namespace="stor.test.outputs")


def outputs_for(value: object, **kwargs: Any) -> LogOutputs:
    problems = Problems()
    config = parse_log(value, problems)
    assert not problems.errors, problems
    return build_log_outputs(config, reactor, **kwargs)


def start(outputs: LogOutputs) -> LogOutputs:
    outputs.privilegedStartService()
    outputs.startService()
    return outputs


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Let the reactor run until ``condition()`` is true (a thread writes files)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await deferLater(reactor, 0.01, lambda: None)
    return value


def gelf_from(peer: Datagrams) -> Callable[[Callable[[dict[str, Any]], bool]], Any]:
    """``wait(match)`` for a whole GELF message on ``peer`` (chunks put back together)."""
    assembler = GelfAssembler()
    messages: list[dict[str, Any]] = []
    seen = [0]

    def take() -> None:
        for datagram in peer.items[seen[0]:]:
            message = assembler.take(datagram)
            if message is not None:
                messages.append(message)
        seen[0] = len(peer.items)

    async def wait(match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            take()
            return next((m for m in messages if match(m)), None)
        return await until(found, "a GELF message")

    wait.messages = messages  # type: ignore[attr-defined]
    wait.assembler = assembler  # type: ignore[attr-defined]
    return wait


def ours(message: dict[str, Any]) -> bool:
    return message.get("_namespace") == "stor.test.outputs"


# -- Gelf --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_gelf_udp_sends_what_log_dispatch_gelf_sent(datagrams) -> None:
    outputs = start(outputs_for([
        ["Gelf", "min_level", "info", "socket", {"host": "127.0.0.1", "port": datagrams.port},
         "additional_fields", {"facility": "stor", "env": "test"}]]))
    wait = gelf_from(datagrams)
    try:
        log.info("hello {who}", who="graylog")
        message = await wait(lambda m: ours(m) and m["short_message"] == "hello graylog")
    finally:
        await outputs.stopService()
    assert json.loads(datagrams.items[-1])  # plain JSON: Log::Dispatch::Gelf's default
    assert message["version"] == "1.1" and message["host"] == socket.gethostname()
    assert message["full_message"] == "hello graylog"
    assert message["level"] == 6 and isinstance(message["timestamp"], float)
    assert message["_facility"] == "stor" and message["_env"] == "test"
    assert message["_who"] == "graylog" and message["_pid"] == os.getpid()


@pytest_twisted.ensureDeferred
async def test_min_and_max_level_choose_the_events(datagrams) -> None:
    outputs = start(outputs_for([
        ["Gelf", "min_level", "warning", "max_level", "error",
         "socket", {"host": "127.0.0.1", "port": datagrams.port}]]))
    wait = gelf_from(datagrams)
    try:
        log.info("info is below warning")
        log.critical("critical is above error")
        log.debug("debug is below warning")
        log.warn("warn is a warning")
        log.error("error is an error")
        warn = await wait(lambda m: ours(m) and m["short_message"] == "warn is a warning")
        error = await wait(lambda m: ours(m) and m["short_message"] == "error is an error")
    finally:
        await outputs.stopService()
    assert (warn["level"], error["level"]) == (4, 3)
    assert [m["short_message"] for m in wait.messages if ours(m)] == [  # type: ignore[attr-defined]
        "warn is a warning", "error is an error"]


@pytest_twisted.ensureDeferred
async def test_a_failure_is_sent_with_its_traceback(datagrams) -> None:
    outputs = start(outputs_for([
        ["Gelf", "min_level", "debug", "socket", {"host": "127.0.0.1", "port": datagrams.port}]]))
    wait = gelf_from(datagrams)
    try:
        try:
            raise ValueError("the reason")
        except ValueError:
            log.failure("it broke")
        message = await wait(lambda m: ours(m) and m["short_message"] == "it broke")
    finally:
        await outputs.stopService()
    assert message["level"] == 2  # twisted's critical
    assert message["full_message"].startswith("it broke\nTraceback")
    assert "ValueError: the reason" in message["full_message"]


@pytest_twisted.ensureDeferred
async def test_gelf_chunked_wan_and_gzip(datagrams) -> None:
    outputs = start(outputs_for([
        ["Gelf", "min_level", "debug", "chunked", "wan", "compress", 1,
         "socket", {"host": "127.0.0.1", "port": datagrams.port}]]))
    wait = gelf_from(datagrams)
    text = os.urandom(6000).hex()  # does not compress: several chunks
    try:
        log.info("big {text}", text=text)
        message = await wait(lambda m: ours(m) and m.get("_text") == text)
    finally:
        await outputs.stopService()
    assert wait.assembler.chunked >= 1  # type: ignore[attr-defined]
    assert max(len(d) for d in datagrams.items) <= 1420 + 12
    assert message["short_message"] == f"big {text}"


@pytest_twisted.ensureDeferred
async def test_gelf_tcp_frames_with_nul_and_keeps_messages_until_graylog_listens() -> None:
    port = free_port()
    outputs = start(outputs_for([
        ["Gelf", "min_level", "info", "additional_fields", {"facility": "stor"},
         "socket", {"host": "127.0.0.1", "port": port, "protocol": "tcp"}]]))
    stream = Stream(b"\0")
    listening = None
    try:
        log.info("sent before Graylog listens")
        listening = reactor.listenTCP(port, stream, interface="127.0.0.1")
        frame = await stream.wait(
            lambda f: json.loads(f).get("short_message") == "sent before Graylog listens",
            timeout=15)
        log.info("sent while connected")
        await stream.wait(lambda f: json.loads(f).get("short_message") == "sent while connected")
    finally:
        await outputs.stopService()
        if listening is not None:
            await listening.stopListening()
    message = json.loads(frame)  # uncompressed JSON, the NUL was the frame's end
    assert message["_facility"] == "stor" and message["level"] == 6


# -- File ---------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_file_is_emptied_at_start_by_default_and_gets_one_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "stor.log"
    path.write_text("from the last run\n")
    outputs = start(outputs_for([["File", "min_level", "info", "filename", str(path)]]))
    try:
        assert path.read_text() == ""  # Log::Dispatch::File's default mode '>'
        log.info("first {n}", n=1)
        log.debug("debug is below info")
        log.info("second")
        await until(lambda: "second\n" in path.read_text(), "the second line")
        outputs.reopen()  # a reopen (SIGUSR1) without rotation never empties it again
        log.info("third")
        await until(lambda: "third\n" in path.read_text(), "the third line")
    finally:
        await outputs.stopService()
    lines = [line for line in path.read_text().splitlines()
             if line in ("first 1", "second", "third") or "debug is below" in line]
    assert lines == ["first 1", "second", "third"]


@pytest_twisted.ensureDeferred
async def test_file_in_append_mode_keeps_what_was_there_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "stor.log"
    path.write_text("from the last run\n")
    outputs = start(outputs_for([["File", "min_level", "info", "filename", str(path),
                                  "mode", "append"]]))
    try:
        log.info("before rotation")
        await until(lambda: "before rotation\n" in path.read_text(), "a line")
        path.rename(tmp_path / "stor.log.1")  # logrotate
        log.info("still the old file")
        outputs.reopen()
        await until(path.exists, "the file to be made again")
        log.info("after rotation")
        await until(lambda: "after rotation\n" in path.read_text(), "a line in the new file")
    finally:
        await outputs.stopService()
    rotated = (tmp_path / "stor.log.1").read_text()
    assert rotated.startswith("from the last run\nbefore rotation\n")
    assert "after rotation" not in rotated and "before rotation" not in path.read_text()


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path: Path) -> None:
    entered, release = threading.Event(), threading.Event()
    written: list[bytes] = []

    class SlowDisk:
        def write(self, data: bytes) -> int:
            entered.set()
            release.wait(10)
            written.append(bytes(data))
            return len(data)

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    slow: Any = SlowDisk()
    writer = LineWriter("slow", lambda append: slow, opened=slow, limit=2)
    writer.start()
    try:
        writer.put(b"1\n")
        assert entered.wait(10)  # the thread is stuck writing line 1
        started = time.monotonic()
        for n in (2, 3, 4):
            writer.put(b"%d\n" % n)
        assert time.monotonic() - started < 1.0
        assert writer.dropped == 1  # the queue holds two lines
    finally:
        release.set()
        writer.stop()
    assert b"".join(written) == b"1\n2\n3\n"
    assert writer.written == 3


# -- Syslog ------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_syslog_sends_rfc3164_datagrams_to_the_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    peer = Datagrams()
    port = reactor.listenUNIXDatagram(path, peer)
    outputs = start(outputs_for([["Syslog", "min_level", "info", "ident", "stor-test",
                                  "logopt", "pid", "facility", "local0",
                                  "socket", {"type": "unix", "path": path}]]))
    try:
        log.warn("disk {n} is slow", n=3)
        datagram = await peer.wait(lambda d: d.endswith(b"disk 3 is slow"))
    finally:
        await outputs.stopService()
        await port.stopListening()
    # local0 (16) * 8 + warning (4)
    header, _, text = datagram.decode().partition(": ")
    assert header.startswith("<132>") and header.endswith(f" stor-test[{os.getpid()}]")
    time.strptime(header[5:20], "%b %d %H:%M:%S")
    assert text == "disk 3 is slow"


# -- stor processes ------------------------------------------------------------------------------


@pytest.mark.acceptance('stor-process')
def test_a_file_output_is_reopened_after_sigusr1_and_sighup_still_stops(stor_process,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "stor.log"
    stor = stor_process(log=[["File", "min_level", "info", "filename", str(path)]])
    sha = "ab" * 32
    assert request(stor.port, "GET", f"/{sha}").status == 404
    wait_for(lambda: f"GET /{sha} 404" in path.read_text(), "the access line", stor)

    path.rename(tmp_path / "stor.log.1")  # logrotate, then its postrotate
    stor.popen.send_signal(signal.SIGUSR1)
    wait_for(path.exists, "the log file to be made again", stor)
    other = "cd" * 32
    assert request(stor.port, "GET", f"/{other}").status == 404
    wait_for(lambda: f"GET /{other} 404" in path.read_text(), "the access line in the new file", stor)
    assert f"GET /{other}" not in (tmp_path / "stor.log.1").read_text()
    assert "SIGUSR1: reopening 1 log files" in (tmp_path / "stor.log.1").read_text() + path.read_text()

    stor.popen.send_signal(signal.SIGHUP)  # the old service's tests stop it so
    assert stor.popen.wait(30) == 0  # a graceful stop, as SIGTERM


@pytest.mark.acceptance('stor-process')
def test_sigusr1_does_not_kill_stor_without_a_file_output(stor_process) -> None:
    stor = stor_process()
    stor.popen.send_signal(signal.SIGUSR1)
    assert request(stor.port, "GET", "/status").status == 200
    assert stor.popen.poll() is None
    assert stor.terminate() == 0


@pytest.mark.acceptance('stor-process')
def test_screen_writes_to_stderr_by_default_and_to_stdout_when_asked(stor_process) -> None:
    stor = stor_process(log=[["Screen", "min_level", "warning"],
                             ["Screen", "min_level", "info", "stderr", 0],
                             ["Nonesuch", "min_level", "info"]])
    sha = "ef" * 32
    assert request(stor.port, "GET", f"/{sha}").status == 404
    wait_for(lambda: f"\nGET /{sha} 404" in stor.out, "the access line on stdout", stor)
    # the unknown class is one warning, on both outputs that take warnings
    warning = "config: log[2]: output class 'Nonesuch' is not one stor knows"
    wait_for(lambda: warning in stor.err, "the warning on stderr", stor)
    assert f"GET /{sha}" not in stor.err  # info is below the stderr output's warning
    assert stor.terminate() == 0
    assert stor.err.count(warning) == 1


@pytest.mark.acceptance('stor-process')
def test_workers_log_each_event_once_and_all_reopen_on_sigusr1(stor_process, tmp_path: Path) -> None:
    path = tmp_path / "stor.log"
    path.write_text("old\n")
    stor = stor_process(["--workers", "2"],
                        log=[["File", "min_level", "info", "filename", str(path)]])
    wait_for(lambda: "all 2 workers serving" in stor.out, "both workers", stor)
    assert "old" not in path.read_text()  # the parent emptied it once; the workers appended

    def one_request_per_worker(tag: str) -> dict[int, str]:
        paths: dict[int, str] = {}
        for n in range(400):
            p = f"/{tag}-{n}"
            answer = request(stor.port, "GET", p)
            paths.setdefault(int(answer.headers["stor-worker"]), p)
            if len(paths) == 2:
                return paths
        pytest.fail("two workers did not both answer")

    before = one_request_per_worker("before")
    wait_for(lambda: all(f"GET {p} 404" in path.read_text() for p in before.values()),
             "both workers' access lines", stor)
    text = path.read_text()
    assert all(text.count(f"GET {p} 404") == 1 for p in before.values())

    path.rename(tmp_path / "stor.log.1")
    stor.popen.send_signal(signal.SIGUSR1)  # to the parent, as logrotate does
    both = (lambda: (tmp_path / "stor.log.1").read_text() + (path.read_text() if path.exists() else ""))
    wait_for(lambda: path.exists() and both().count("SIGUSR1: reopening 1 log files") == 3,
             "parent and workers to reopen", stor)
    after = one_request_per_worker("after")
    wait_for(lambda: all(f"GET {p} 404" in path.read_text() for p in after.values()),
             "both workers' access lines in the new file", stor)
    assert stor.terminate() == 0
