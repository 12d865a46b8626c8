"""Issue 19, findings 3 and 4: logs carry a request's bytes as text, never as structure,
and no credential reaches any log output."""

import json
import socket
import subprocess
from pathlib import Path

import pytest

from twisted.logger import LogLevel
from twisted.python.failure import Failure

from support.harness import TWISTD, request, wait_for
from support.logs import GelfAssembler
from stor.observe.gelf import gelf_message
from stor.observe.log_outputs import event_text
from stor.observe.logs import TextLines, event_as_record, format_json_line
from stor.config.log import GelfOutput


SHA = "ab" * 32
CONTROLS = [b"\n", b"\r", b"\x1b", b"\x07", b"\x00", "\u2028".encode()]


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _assert_lines_are_stors(text: bytes, what: str) -> None:
    for line in text.splitlines():
        assert not line.startswith(b"2026-01-01T00:00:00"), f"{what}: forged line {line!r}"
    for c in [b"\r", b"\x1b", b"\x07", b"\x00"]:
        assert c not in text, f"{what} holds {c!r}"


@pytest.mark.acceptance('stor-process')
def test_hostile_request_lines_and_headers_reach_no_output_raw(stor_process, tmp_path: Path) -> None:
    log_file = tmp_path / "stor-file.log"
    stor = stor_process(log=[["File", "min_level", "debug", "filename", str(log_file)]])
    forged = "2026-01-01T00:00:00+0000 [1] [stor.http.app#info] DELETE 204 by admin"
    _raw(stor.port, b"HEAD /%0a" + forged.replace(" ", "%20").encode() + b"%0dx%1b[2J HTTP/1.1\r\n"
                    b"Host: x\r\nConnection: close\r\n\r\n")
    _raw(stor.port, b"GET /%1b[31mred%07 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"User-Agent: evil\x1b[2J\x07agent\r\n\r\n")
    wait_for(lambda: log_file.exists() and log_file.read_bytes().count(b"\n") >= 2
             and b"red" in log_file.read_bytes(), "both requests in the File output", stor)
    wait_for(lambda: b"red" in stor.out_path.read_bytes(), "both requests on stdout", stor)
    _assert_lines_are_stors(log_file.read_bytes(), "the File output")
    _assert_lines_are_stors(stor.out_path.read_bytes(), "the text log")
    assert b"\\x0a2026-01-01T00:00:00" in log_file.read_bytes()


def test_json_text_gelf_and_syslog_texts_escape_every_control_character() -> None:
    hostile = "seg\nment\r\x1b[2J\x07\x00\u2028end"
    event = {"log_level": LogLevel.warn, "log_namespace": "stor.http.app", "log_time": 0.0,
             "log_format": "File '{segment}' not found", "segment": hostile,
             "user_agent": hostile}
    try:
        raise ValueError(hostile)
    except ValueError:
        failing = dict(event, log_failure=Failure())
    texts = {
        "text": TextLines()(event), "text+traceback": TextLines()(failing),
        "json": format_json_line(failing),
        "file/screen/syslog": event_text(failing) + "\n",
        "gelf": json.dumps(gelf_message(event_as_record(failing), 0.0, 3, "h",
                                        GelfOutput(key="log[0]", host="graylog")), ensure_ascii=False),
    }
    for name, text in texts.items():
        for c in ["\r", "\x1b", "\x07", "\x00", "\u2028"]:
            assert c not in text, (name, c, text)
        first, *rest = text.rstrip("\n").split("\n")
        assert "end" in first or name == "gelf", (name, text)
        assert all(line.startswith(("\t", " ", "Traceback", "builtins", "ValueError", "---"))
                   for line in rest), (name, rest)
    record = json.loads(texts["json"])
    assert record["segment"] == "seg\\x0ament\\x0d\\x1b[2J\\x07\\x00\\u2028end"


@pytest.mark.acceptance('stor-process')
def test_absolute_form_userinfo_is_not_logged(stor_process) -> None:
    stor = stor_process(args=["--log-format", "json"])
    for method in ("GET", "HEAD"):
        _raw(stor.port, f"{method} http://alice:s3cr3t-pw@example.com/{SHA} HTTP/1.1\r\n"
                        "Host: example.com\r\nConnection: close\r\n\r\n".encode())
    def answered() -> list[str]:  # the harness's own /health/live checks set aside
        return [r["path"] for r in stor.access() if not r["path"].startswith("/health/")]

    wait_for(lambda: len(answered()) >= 2, "two access events", stor)
    assert "s3cr3t-pw" not in stor.out + stor.err
    # routed by its path, as the old service did: the access event names that path
    assert answered() == [f"/{SHA}"] * 2


@pytest.mark.acceptance('stor-process')
def test_no_credential_of_the_config_is_printed(stor_process, tmp_path: Path) -> None:
    log_file = tmp_path / "stor-file.log"
    stor = stor_process(basic_auth="NoColonSecret1", rabbitmq_uri="http://bob:Secret2@mq/",
                        log=[["File", "min_level", "debug", "filename", str(log_file)]])
    wait_for(lambda: log_file.exists() and b"basic_auth" in log_file.read_bytes(),
             "the basic_auth warning", stor)
    stor.terminate()
    everything = stor.out + stor.err + log_file.read_text()
    assert "basic_auth: must be user:password" in everything
    assert "rabbitmq_uri" in everything
    for secret in ("NoColonSecret1", "Secret2"):
        assert secret not in everything


@pytest.mark.acceptance('stor-process')
def test_a_malformed_delete_auth_stops_start_up_without_printing_it(tmp_path: Path) -> None:
    storages = [str(tmp_path / f"d{i}") for i in range(2)]
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"storage_pairs": [storages], "delete_auth": "OnlySecret3",
                                  "rabbitmq_uri": "amqp://u:Secret4@[bad/"}))
    done = subprocess.run([TWISTD, "-n", "--pidfile=", "stor", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert "delete_auth" in done.stderr
    for secret in ("OnlySecret3", "Secret4"):
        assert secret not in done.stdout + done.stderr


class _UnixDatagrams:
    """A syslog socket of the test's own (``/dev/log`` stands in), its datagrams kept."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.received: list[bytes] = []

    def drain(self) -> list[bytes]:
        while True:
            try:
                self.received.append(self.sock.recv(65536))
            except BlockingIOError:
                return self.received


HOSTILE = [  # (request bytes, what its escaped form leaves in a line)
    (b"HEAD /%0a2026-01-01T00:00:00+0000%20[stor.http.app#warn]%20FORGED%20DELETE%20204"
     b"%0d%1b[2J%07%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "FORGED"),
    (b"GET /%1b]0;owned%07bell HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
     b"User-Agent: evil\x1b[2J\x07agent\r\n\r\n", "bell"),
    (b"GET http://alice:s3cr3t-pw@example.com/" + SHA.encode() + b" HTTP/1.1\r\n"
     b"Host: example.com\r\nConnection: close\r\n\r\n", SHA),
]
SECRETS = ("NoColonSecret1", "Secret2", "s3cr3t-pw")
RAW = ["\n", "\r", "\x1b", "\x07", "\x00"]


@pytest.mark.acceptance('stor-process')
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_output_carries_hostile_input_as_text_and_no_secret(stor_process, tmp_path: Path,
                                                                  log_format: str) -> None:
    """Findings 3 and 4 through every output at once: the File, Screen (stderr), Syslog and
    GELF outputs and the text or JSON log on stdout, of one stor started with a ``basic_auth``
    without ``:`` and a ``rabbitmq_uri`` of the wrong scheme holding a password, asked the
    hostile request lines above.  Each request shows up in each output, escaped: no forged
    line, no raw control character, no credential."""
    log_file = tmp_path / "stor-file.log"
    syslog = _UnixDatagrams(tmp_path / "dev-log")
    gelf = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gelf.bind(("127.0.0.1", 0))
    gelf.setblocking(False)
    stor = stor_process(
        args=["--log-format", log_format],
        basic_auth="NoColonSecret1", rabbitmq_uri="http://bob:Secret2@mq/",
        log=[["File", "min_level", "debug", "filename", str(log_file)],
             ["Screen", "min_level", "debug"],
             ["Syslog", "min_level", "debug", "ident", "stor-test",
              "socket", {"type": "unix", "path": str(tmp_path / "dev-log")}],
             ["Gelf", "min_level", "debug",
              "socket", {"host": "127.0.0.1", "port": gelf.getsockname()[1], "protocol": "udp"}]])
    for data, _ in HOSTILE:
        _raw(stor.port, data)
    assembler, gelf_messages = GelfAssembler(), []

    def outputs() -> dict[str, list[str]]:
        while True:
            try:
                message = assembler.take(gelf.recv(65536))
            except BlockingIOError:
                break
            if message is not None:
                gelf_messages.append(message)
        return {
            "File": log_file.read_text(errors="replace").splitlines(keepends=True)
            if log_file.exists() else [],
            "Screen": stor.err.splitlines(keepends=True),
            "Syslog": [d.decode(errors="replace") for d in syslog.drain()],
            "GELF": [v for m in gelf_messages for k, v in m.items()
                     if isinstance(v, str) and k != "host"],
            log_format: stor.out.splitlines(keepends=True),
        }

    def every_request_everywhere() -> bool:
        seen = outputs()
        return all(any(mark in line for line in lines) for lines in seen.values()
                   for _, mark in HOSTILE)

    wait_for(every_request_everywhere, "every hostile request in every output", stor)
    stor.terminate()
    for name, lines in outputs().items():
        text = "".join(lines)
        for secret in SECRETS:
            assert secret not in text, (name, secret)
        assert "basic_auth: must be user:password" in text, name
        for line in lines:
            assert not any(c in line.rstrip("\n") for c in RAW), (name, line)
            assert not line.startswith("2026-01-01T00:00:00+0000"), (name, line)  # forged
    assert "\\x0a2026-01-01T00:00:00+0000 [stor.http.app#warn] FORGED" in log_file.read_text()
    syslog.sock.close()
    gelf.close()
