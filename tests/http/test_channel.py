"""The one adapter over twisted.web's private state (stor/http/channel.py): if a new
Twisted changes what it relies on, these fail loudly."""

import os
import socket

import pytest_twisted
from twisted.internet import endpoints, reactor, threads
from twisted.web import server
from twisted.web.resource import Resource

from stor.http.channel import SocketSendfile, StorChannel, request_line


class Seen(server.Request):
    """Records what the adapter sees of the request while its headers arrive."""

    lines: list = []

    def gotLength(self, length):  # type: ignore[no-untyped-def]
        Seen.lines.append(request_line(self.channel))
        super().gotLength(length)


class SendfileResource(Resource):
    """Answers with a file sent through SocketSendfile, or says it has none."""

    isLeaf = True

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.targets: list = []

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        target = SocketSendfile.of(request)
        self.targets.append(target)
        size = os.path.getsize(self.path)
        request.setHeader(b"content-length", b"%d" % size)
        if target is None:
            return b"x" * size
        f = open(self.path, "rb")
        state = {"sent": 0}

        class Producer:
            def pauseProducing(self) -> None:
                pass

            def stopProducing(self) -> None:
                f.close()

            def resumeProducing(self) -> None:
                while state["sent"] < size:
                    n = target.send(f.fileno(), state["sent"], size - state["sent"])
                    if n is None:
                        return  # resumed when writable
                    state["sent"] += n
                target.end()
                f.close()
                request.finish()

        target.begin(Producer())
        return server.NOT_DONE_YET


def site_for(resource: Resource) -> server.Site:
    site = server.Site(resource)
    site.protocol = StorChannel
    site.requestFactory = Seen
    return site


def get(host: str, port: int, path: bytes = b"/") -> bytes:
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET " + path + b"?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data


@pytest_twisted.ensureDeferred
async def test_the_request_line_is_known_when_the_headers_are_in(tmp_path):
    Seen.lines = []
    (tmp_path / "f").write_bytes(b"hello")
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        site_for(SendfileResource(str(tmp_path / "f"))))
    try:
        await threads.deferToThread(get, "127.0.0.1", port.getHost().port, b"/file")
    finally:
        await port.stopListening()
    assert Seen.lines == [(b"GET", b"/file?q=1", b"HTTP/1.1")]


@pytest_twisted.ensureDeferred
async def test_a_tcp_connection_takes_a_file_by_sendfile(tmp_path):
    data = os.urandom(6 * 1024 * 1024)
    (tmp_path / "f").write_bytes(data)
    resource = SendfileResource(str(tmp_path / "f"))
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        site_for(resource))
    try:
        answer = await threads.deferToThread(get, "127.0.0.1", port.getHost().port)
    finally:
        await port.stopListening()
    assert resource.targets and resource.targets[0] is not None
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == data


@pytest_twisted.ensureDeferred
async def test_a_unix_socket_connection_has_no_sendfile_target(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    resource = SendfileResource(str(tmp_path / "f"))
    address = str(tmp_path / "s")
    port = await endpoints.UNIXServerEndpoint(reactor, address).listen(site_for(resource))

    def get_unix() -> bytes:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(address)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return data

    try:
        answer = await threads.deferToThread(get_unix)
    finally:
        await port.stopListening()
    assert resource.targets == [None] and answer.endswith(b"xxx")
