"""Real peers for the S3 read-through tests.

- fixtures ``moto`` (one server for the session) and ``bucket`` (a new bucket per test);
- :func:`start_moto`: moto's S3 server as a subprocess, with signature checking
  switched on (an IAM user with an ``s3:*`` policy is created first; after that
  every request must carry that user's valid SigV4 signature).
- :func:`black_hole`: a listening socket that never answers.
- :func:`refused_port`: a port nothing listens on (from :mod:`support.ports`).
- :class:`ScriptedPeer`: a loopback TCP server that answers every request with
  canned bytes and then closes or goes silent, for the answers moto cannot be
  made to give (a 500, garbage, a body cut short or stalled mid-way).
"""

import ctypes
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import botocore.session
import pytest
from botocore.config import Config as BotoConfig
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from support.ports import refused_port  # noqa: F401  (tests import it from here)

REGION = "us-east-1"
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


@dataclass
class S3Peer:
    """A running S3 server (moto or Ceph RGW) and the credentials of its one user:
    what the tests use to set up and inspect buckets, the same on either."""

    endpoint: str
    access_key: str
    secret_key: str

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        """A blocking botocore S3 client (path-style) for setting up fixtures."""
        return _client(self.endpoint, "s3", access_key or self.access_key,
                       secret_key or self.secret_key)

    def new_bucket(self, prefix: str = "stor-test") -> str:
        """Create a bucket with a name no other test uses."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def put(self, bucket: str, key: str, body: bytes | IO[bytes]) -> dict[str, Any]:
        """Store ``body`` (bytes or a seekable file, streamed) under ``key``."""
        return self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def head(self, bucket: str, key: str) -> dict[str, str]:
        """The object's response headers, as the server sends them."""
        answer = self.client().head_object(Bucket=bucket, Key=key)
        return answer["ResponseMetadata"]["HTTPHeaders"]


@dataclass
class MotoS3(S3Peer):
    """A running moto server and the credentials it accepts."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _client(endpoint: str, service: str, access_key: str, secret_key: str) -> Any:
    return botocore.session.get_session().create_client(
        service, region_name=REGION, endpoint_url=endpoint,
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def start_moto(log_path: Path, python: str = sys.executable) -> MotoS3:
    """Start ``python -m moto.server`` on a free port and switch its auth checks on.

    The port is chosen by the server itself (``-p 0``) and read back from its
    log, so no other process can take it in between.  Output goes to
    ``log_path`` (a pipe nobody reads would fill up and stall the server).
    """
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
        stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )
    log.close()
    try:
        endpoint = _wait_for_start(process, log_path)
        access_key, secret_key = _enable_auth(endpoint)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return MotoS3(endpoint, access_key, secret_key, process, log_path)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if pytest dies without tearing down (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _wait_for_start(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited ({process.returncode}): {log_path.read_text()}")
        found = re.search(rb"Running on (http://127\.0\.0\.1:\d+)", log_path.read_bytes())
        if found:
            endpoint = found.group(1).decode()
            if _answers(endpoint):
                return endpoint
        time.sleep(0.05)
    raise RuntimeError(f"moto did not start within {START_TIMEOUT}s: {log_path.read_text()}")


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
            return True
    except OSError:
        return False


def _enable_auth(endpoint: str) -> tuple[str, str]:
    """Create an IAM user allowed ``s3:*``, then make moto check every signature."""
    iam = _client(endpoint, "iam", "setup", "setup")
    iam.create_user(UserName="stor")
    iam.put_user_policy(UserName="stor", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName="stor")["AccessKey"]
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=5):
        pass
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def black_hole() -> Iterator[int]:
    """A loopback port whose listener completes TCP handshakes and then says nothing.

    The kernel accepts connections into the listen backlog; the test never
    calls ``accept`` or reads, so a request sent there is never answered.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]
    finally:
        sock.close()


def response(status: str = "200 OK", headers: dict[str, str] | None = None,
             body: bytes = b"", content_length: int | None = None) -> bytes:
    """A raw HTTP/1.1 response; ``content_length`` may claim more than ``body`` holds."""
    lines = [f"HTTP/1.1 {status}"]
    all_headers = {"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT", **(headers or {})}
    if content_length is not None:
        all_headers["Content-Length"] = str(content_length)
    lines += [f"{name}: {value}" for name, value in all_headers.items() if value]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class _ScriptedProtocol(Protocol):
    factory: "ScriptedPeer"

    def connectionMade(self) -> None:
        self._buffer = b""
        self._answered = False
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if self._answered or b"\r\n\r\n" not in self._buffer:
            return
        self._answered = True
        self.factory.requests.append(self._buffer.split(b"\r\n\r\n", 1)[0])
        self.transport.write(self.factory.answer)
        if self.factory.then == "close":
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.lost += 1
        ready = [(n, d) for n, d in self.factory.waiting if self.factory.lost >= n]
        self.factory.waiting = [w for w in self.factory.waiting if w not in ready]
        for _, d in ready:
            d.callback(None)


@dataclass
class ScriptedPeer(Factory):
    """Answers every HTTP request with ``answer``, then closes (``then="close"``)
    or keeps the connection open and silent (``then="stall"``)."""

    answer: bytes
    then: str = "close"
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    lost: int = 0
    waiting: list[tuple[int, "Deferred[None]"]] = field(default_factory=list)

    protocol = _ScriptedProtocol

    def __post_init__(self) -> None:
        Factory.__init__(self)

    def lost_connections(self, count: int) -> "Deferred[None]":
        """Fires once ``count`` connections to this peer have closed (either side)."""
        d: Deferred[None] = Deferred()
        if self.lost >= count:
            d.callback(None)
        else:
            self.waiting.append((count, d))
        return d


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto's S3 server, a real HTTP endpoint checking signatures, for the whole session."""
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    """A bucket no other test uses."""
    return moto.new_bucket()
