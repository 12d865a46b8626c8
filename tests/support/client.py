"""Peers for the client tests: a TCP relay that watches and breaks connections, a fake server.

Both are plain threads on real loopback sockets, so the ``stor`` command under
test runs as a real process against them while the (synchronous) test waits.
"""

import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HEAD = re.compile(rb"([A-Z]+) (\S+) HTTP/1\.[01]")


@dataclass
class Seen:
    """A request as it crossed the wire."""

    method: str
    path: str
    headers: dict[str, str]

    @property
    def sha(self) -> str:
        return self.path.lstrip("/")


class _RequestParser:
    """Finds request heads in a client's byte stream (bodies skipped by Content-Length)."""

    def __init__(self, on_request: Callable[[Seen], None]) -> None:
        self._buf = b""
        self._skip = 0
        self._on_request = on_request

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            if self._skip:
                n = min(self._skip, len(self._buf))
                self._buf, self._skip = self._buf[n:], self._skip - n
                if self._skip:
                    return
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buf = self._buf[:end], self._buf[end + 4:]
            lines = head.split(b"\r\n")
            m = _HEAD.match(lines[0])
            if m is None:
                continue
            headers = {}
            for line in lines[1:]:
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            self._skip = int(headers.get("content-length", "0"))
            self._on_request(Seen(m.group(1).decode(), m.group(2).decode(), headers))


class Relay:
    """Forwards 127.0.0.1:``port`` to ``upstream`` and records every request it carries.

    ``cut_after``: the first ``cuts`` connections are closed after that many bytes
    of answer.  ``stall_after``: answers stop flowing after that many bytes on
    every connection until :meth:`release`; ``stall_upload_after``: the same for
    requests (the upload is held).  ``stalled`` is set when a stall begins.
    """

    def __init__(self, upstream_port: int, cut_after: int | None = None, cuts: int = 1,
                 stall_after: int | None = None, stall_upload_after: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts = cuts
        self.stall_after = stall_after
        self.stall_upload_after = stall_upload_after
        self.requests: list[Seen] = []
        self.stalled = threading.Event()
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._open = 0
        self.max_open = 0
        self._sockets: list[socket.socket] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def release(self) -> None:
        self.stall_after = self.stall_upload_after = None
        self._released.set()

    def methods(self) -> list[str]:
        with self._lock:
            return [f"{r.method} {r.sha}" for r in self.requests]

    def close(self) -> None:
        self._released.set()
        self._server.close()
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
                self._connections += 1
                cut = self.cut_after if self._connections <= self.cuts else None
                self._open += 1
                self.max_open = max(self.max_open, self._open)
            parser = _RequestParser(self._record)
            threading.Thread(target=self._pump, daemon=True,
                             args=(client, upstream, parser.feed, None, "up")).start()
            threading.Thread(target=self._pump, daemon=True,
                             args=(upstream, client, None, cut, "down")).start()

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.requests.append(seen)

    def _pump(self, src: socket.socket, dst: socket.socket,
              watch: Callable[[bytes], None] | None, cut: int | None, direction: str) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                stall = self.stall_after if direction == "down" else self.stall_upload_after
                if stall is not None and sent + len(data) > stall:
                    dst.sendall(data[: stall - sent])
                    data = data[stall - sent:]
                    sent = stall
                    self.stalled.set()
                    self._released.wait()
                if cut is not None and sent + len(data) >= cut:
                    dst.sendall(data[: cut - sent])
                    break
                if watch is not None:
                    watch(data)
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            with self._lock:
                if direction == "down":
                    self._open -= 1
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class FakeStor:
    """An HTTP server answering GET/HEAD/POST with ``answer(seen) -> Answer``; records requests.

    For a server that misbehaves on purpose (wrong bytes, 503, odd ranges):
    things a real stor never does.
    """

    def __init__(self, answer: Callable[[Seen], Answer]) -> None:
        self.requests: list[Seen] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("Content-Length", "0"))
                if length:
                    self.rfile.read(length)
                fake.requests.append(seen)
                a = answer(seen)
                self.send_response(a.status)
                for k, v in a.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(a.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(a.body)

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def ranged(data: bytes, seen: Seen) -> Answer:
    """What a correct server answers for ``data``: 200, or 206 for ``Range: bytes=N-``."""
    r = seen.headers.get("range")
    if r is None:
        return Answer(200, data)
    first = int(r.removeprefix("bytes=").rstrip("-"))
    if first >= len(data):
        return Answer(416, b"", {"Content-Range": f"bytes */{len(data)}"})
    return Answer(206, data[first:], {"Content-Range": f"bytes {first}-{len(data) - 1}/{len(data)}"})
