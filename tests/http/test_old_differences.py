"""The old service's last differences (issue 21, items 1–7): stor answers and counts as
the Perl original did.

Each test runs a real ``twistd stor`` (two pairs, four storages, as the old service's
own tests) with its statsite lines sent to a UDP socket of the test, and states the
original's answer it encodes, read from github:avast/Stor (``lib/Stor.pm``,
``script/stor``; routing is Mojolicious 9's).  A line that must *not* be sent is
checked up to a marker request made after the request under test: statsd lines go
out in order, so every line of the earlier request has arrived once the marker's has.
"""

import base64
import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from support.helpers import remove_storage
from support.harness import AUTH_HEADER, Stor, request
from support.logs import UdpReader
from stor.http.handshake import route_target

PREFIX = "old"
MARKER = "/not-a-sha"
"""A GET the old service counts as ``error.get.malformed_sha.count``: the marker."""


class Statsite:
    """The lines a stor process sends to the test's UDP socket, request by request."""

    def __init__(self, reader: UdpReader, port: int) -> None:
        self._reader = reader
        self._port = port

    def lines_of(self, make_request: Callable[[], Any]) -> list[str]:
        """Every line sent for ``make_request()`` (up to and including a marker request's)."""
        make_request()
        request(self._port, "GET", MARKER)
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while not any(line.startswith(f"{PREFIX}.error.get.malformed_sha.count:")
                      for line in lines):
            self._reader.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                datagram = self._reader.sock.recv(65536)
            except TimeoutError:
                pytest.fail(f"no marker line among {lines}")
            lines += datagram.decode().splitlines()
        return lines


@pytest.fixture
def old(stor_process, udp_reader) -> tuple[Stor, Statsite]:
    stor = stor_process(statsite={"host": "127.0.0.1", "port": udp_reader.port,
                                  "prefix": PREFIX})
    return stor, Statsite(udp_reader, stor.port)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def post(port: int, path: str, data: bytes, auth: str = AUTH_HEADER) -> Any:
    return request(port, "POST", path, body=data, headers={"Authorization": auth})


def keys(lines: list[str]) -> list[str]:
    """The keys of ``lines``, prefix dropped (``old.cache.hit:1|c`` → ``cache.hit``)."""
    return [re.sub(rf"^{PREFIX}\.|:.*$", "", line) for line in lines]


@pytest.mark.acceptance('stor-process')
def test_1_a_post_counts_its_duplicate_lookup_over_every_storage(old) -> None:
    """Original: ``post`` calls ``_lookup($sha, 1)`` once the SHA and the credentials
    pass; with ``$return_all_paths`` it tries every storage, and its guard sends
    ``lookup.time`` and ``lookup.attempt.<storages tried>.count`` — ``attempt.4`` on two
    pairs, for a new file and for a duplicate alike.  A 401 returns before the lookup."""
    stor, statsite = old
    data = os.urandom(3000)
    new = statsite.lines_of(lambda: post(stor.port, f"/{sha256(data)}", data))
    again = statsite.lines_of(lambda: post(stor.port, f"/{sha256(data)}", data))
    refused = statsite.lines_of(lambda: post(stor.port, f"/{sha256(b'x')}", b"x",
                                             auth="Basic " + base64.b64encode(b"a:b").decode()))
    for lines, answer in ((new, "success.post.write.count"),
                          (again, "success.post.duplicate.count")):
        found = keys(lines)
        assert found.count("lookup.time") == 1 and found.count("lookup.attempt.4.count") == 1
        assert found.index("lookup.attempt.4.count") < found.index(answer)
        assert any(re.fullmatch(rf"{PREFIX}\.lookup\.time:[0-9.]+\|ms", line) for line in lines)
    assert not any(k.startswith("lookup.") for k in keys(refused))


@pytest.mark.acceptance('stor-process')
def test_2_status_with_a_trailing_slash_is_status(old) -> None:
    """Original: ``GET /status/`` (and HEAD) routes to ``status`` (Mojolicious ignores
    one trailing slash): 200 ``OK`` and ``healthcheck.count``."""
    stor, statsite = old
    answers = []
    lines = statsite.lines_of(lambda: answers.extend(
        request(stor.port, method, "/status/") for method in ("GET", "HEAD")))
    assert [(a.status, a.body) for a in answers] == [(200, b"OK"), (200, b"")]
    assert keys(lines).count("healthcheck.count") == 2


@pytest.mark.acceptance('stor-process')
def test_3_a_sha_with_a_trailing_slash_is_the_sha(old) -> None:
    """Original: ``/:sha/`` matches ``/:sha`` (one trailing slash ignored): GET and HEAD
    answer the file, POST runs the usual checks on the SHA (``Given hash 'abc' isn't
    sha256`` for a malformed one, then 201 with the paths)."""
    stor, _ = old
    data = os.urandom(2000)
    sha = sha256(data)
    malformed = post(stor.port, "/abc/", data)
    assert (malformed.status, malformed.body) == (412, b"Given hash 'abc' isn't sha256")
    stored = post(stor.port, f"/{sha}/", data)
    assert stored.status == 201 and len(json.loads(stored.body)) == 2
    got = request(stor.port, "GET", f"/{sha}/")
    assert (got.status, got.body) == (200, data)
    head = request(stor.port, "HEAD", f"/{sha}/")
    assert (head.status, head.headers["content-length"]) == (200, str(len(data)))
    assert post(stor.port, f"/{sha}/", data).status == 200  # the duplicate, found


@pytest.mark.acceptance('stor-process')
def test_4_an_absolute_form_target_is_routed_by_its_path(old) -> None:
    """Original: ``GET http://host/<sha>`` (RFC 9112 §3.2.2) is routed by the URL's path,
    as any Mojolicious request: the file; ``POST http://host/<sha>`` stores it."""
    stor, _ = old
    data = os.urandom(1500)
    sha = sha256(data)
    stored = post(stor.port, f"http://stor.example/{sha}", data)
    assert stored.status == 201
    got = request(stor.port, "GET", f"http://stor.example:8080/{sha}")
    assert (got.status, got.body) == (200, data)
    status = request(stor.port, "GET", "http://stor.example/status")
    assert (status.status, status.body) == (200, b"OK")


@pytest.mark.acceptance('stor-process')
def test_5_a_failing_status_counts_no_healthcheck(old) -> None:
    """Original: ``status`` dies on the first failing storage before
    ``increment('healthcheck.count')``: only a passing check is counted."""
    stor, statsite = old
    passing = statsite.lines_of(lambda: request(stor.port, "GET", "/status"))
    remove_storage(stor.extra["storages"][3])  # with the .stor-tmp its write probe made
    answers = []
    failing = statsite.lines_of(lambda: answers.append(request(stor.port, "GET", "/status")))
    assert answers[0].status == 503
    assert keys(passing).count("healthcheck.count") == 1
    assert "healthcheck.count" not in keys(failing)


@pytest.mark.acceptance('stor-process')
def test_6_a_head_of_a_stored_file_counts_no_bytes(old) -> None:
    """Original: ``get_from_old_storages`` increments ``success.get.ok_old.<srv>.count``;
    ``.size`` and ``.time`` are sent by the body's drain callback, which a HEAD (no body
    written) never runs: a HEAD sends the count only, a GET all three."""
    stor, statsite = old
    data = os.urandom(5000)
    assert post(stor.port, f"/{sha256(data)}", data).status == 201
    head = statsite.lines_of(lambda: request(stor.port, "HEAD", f"/{sha256(data)}"))
    get = statsite.lines_of(lambda: request(stor.port, "GET", f"/{sha256(data)}"))
    served = [k.rsplit(".", 1)[1] for k in keys(head) if k.startswith("success.get.ok_old.")]
    assert served == ["count"]
    served = [k.rsplit(".", 1)[1] for k in keys(get) if k.startswith("success.get.ok_old.")]
    assert sorted(served) == ["count", "size", "time"]


@pytest.mark.acceptance('stor-process')
def test_7_an_upload_answers_json_as_mojolicious_typed_it(old) -> None:
    """Original: ``render(json => …)`` for the 201 and the duplicate 200: Mojolicious
    types it ``application/json;charset=UTF-8``."""
    stor, _ = old
    data = os.urandom(100)
    answers = [post(stor.port, f"/{sha256(data)}", data) for _ in range(2)]
    assert [a.status for a in answers] == [201, 200]
    assert {a.headers["content-type"] for a in answers} == {"application/json;charset=UTF-8"}


@pytest.mark.parametrize("target, routed", [
    (b"/status/", b"/status"),
    (b"/", b"/"),  # the root keeps its slash
    (b"//", b"/"),
    (b"/abc//", b"/abc/"),  # one slash only, as Mojolicious: still unrouted
    (b"/abc/?x=1", b"/abc?x=1"),  # the query is kept
    (b"http://stor.example:8080/abc", b"/abc"),
    (b"HTTPS://stor.example", b"/"),
    (b"http://stor.example?x=1", b"/?x=1"),
    (b"/http://stor.example/abc", b"/http://stor.example/abc"),  # origin-form: as is
])
def test_route_target_edges(target: bytes, routed: bytes) -> None:
    """Items 2–4 are one function over the request target: its edges."""
    assert route_target(target) == routed
