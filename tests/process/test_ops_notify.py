"""systemd's notify protocol: READY=1 once stor listens, STOPPING=1 when it stops."""

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.harness import listening_port
from stor.process.notify import notify, parse_state


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the abstract namespace, and its $NOTIFY_SOCKET name."""
    name = f"stor-test-{os.getpid()}-{secrets.token_hex(4)}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.settimeout(30)
    try:
        yield s, "@" + name
    finally:
        s.close()


def test_notify_sends_one_datagram_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        assert notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
        assert parse_state(s.recv(4096)) == {"READY": "1", "STATUS": "up"}


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})


@pytest.mark.acceptance('stor-process')
def test_ready_once_listening_and_stopping_on_sigterm(stor_process, notify_socket) -> None:
    sock, name = notify_socket
    stor = stor_process(env={"NOTIFY_SOCKET": name}, wait=False)

    ready = parse_state(sock.recv(4096))
    assert ready["READY"] == "1"
    port = listening_port(stor.popen.pid)  # what the kernel says it listens on
    assert ready["STATUS"] == f"serving on 127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # already accepting when systemd is told
    stor.wait_serving()

    stor.popen.send_signal(15)
    assert parse_state(sock.recv(4096)) == {"STOPPING": "1"}
    assert stor.popen.wait(30) == 0, stor.describe()
