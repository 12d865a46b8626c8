"""The old service's own HTTP test, ``t/01_upload_download.t`` of github:avast/Stor, replayed
against stor: its config exactly as that test writes it (storages in temp directories on
the root filesystem, no ``check_mounts`` key, ``"s3_enabled": 0``, ``"log": []``), the
config file named by ``CONFIG_FILE``, the same requests, and stor stopped with SIGHUP as
that test stopped the old service.  Then every error body of docs/SPEC.md §1, byte for byte.
"""

import base64
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.helpers import sha256
from support.harness import LOOPBACK_ANY_PORT, TWISTD, Proc, Stors, answers, clean_env, request, wait_for

pytestmark = pytest.mark.acceptance('stor-process')


@pytest.fixture
def old_test_stor(tmp_path: Path) -> Iterator[tuple[Proc, int]]:
    storages = [tempfile.mkdtemp() for _ in range(4)]  # Path::Tiny->tempdir(): /tmp
    cfg = {
        "storage_pairs": [[storages[0], storages[1]], [storages[2], storages[3]]],
        "secret": "test secret",
        "basic_auth": "user:pass",
        "s3_credentials": {"access_key": "some_key", "secret_key": "another_key",
                           "host": "host"},
        "s3_enabled": 0,
        "log": [],
    }
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))  # encode_json: one line, no check_mounts
    env = clean_env({"CONFIG_FILE": str(cfg_file)})
    stors = Stors(tmp_path)
    proc = stors.run([TWISTD, "-n", "--pidfile=", "stor", "--listen", LOOPBACK_ANY_PORT],
                     "stor", env)  # in its own session, as setpgrp(0, 0)
    try:
        port = proc.wait_port()
        wait_for(lambda: answers(port, "/") is not None, "stor to answer", proc)
        yield proc, port
    finally:
        stors.close()
        for s in storages:
            subprocess.run(["rm", "-rf", s], check=False)


def basic(userinfo: str) -> dict[str, str]:
    """What Mojo::UserAgent sends for ``http://user:pass@host/``."""
    return {"Authorization": "Basic " + base64.b64encode(userinfo.encode()).decode()}


def test_the_old_services_upload_download_test_passes(old_test_stor) -> None:
    proc, port = old_test_stor
    content = b"Content!" + str(random.random()).encode()  # 'Content!' . rand
    sha = sha256(content)

    tx = request(port, "POST", f"/{sha}", content)
    assert tx.status == 401, "basic authorization"

    tx = request(port, "POST", f"/{sha}", content, basic("user:pass"))
    assert tx.status == 201, "file created"
    res = request(port, "GET", f"/{sha}")
    assert res.body == content, "received what we had sent"
    assert re.search(r"\w+, \d+ \w+ \d+ \d+:\d+:\d+ GMT", res.headers["last-modified"]), \
        "Last-Modified header exists"
    tx = request(port, "GET", "/" + "0" * 64)
    assert tx.status == 404, "zero hash not found"

    os.killpg(proc.popen.pid, signal.SIGHUP)  # kill 'HUP', -$pid
    assert proc.popen.wait(30) == 0, proc.describe()  # a graceful stop
    assert "config warning" not in proc.out + proc.err, proc.describe()  # the file is fine


def test_error_bodies_are_the_old_services_byte_for_byte(old_test_stor) -> None:
    _, port = old_test_stor
    auth = basic("user:pass")
    body = b"some content"
    wrong = "AB" * 32

    unknown = "0" * 64
    got = request(port, "GET", f"/{unknown}")
    assert (got.status, got.body) == (
        404, f"Caught failure::stor::filenotfound: File '{unknown}' not found\n".encode())
    got = request(port, "HEAD", f"/{unknown}")
    assert got.status == 404

    got = request(port, "GET", "/not-a-sha")
    assert (got.status, got.body) == (
        404, b"Caught failure::stor::filenotfound: Given hash 'not-a-sha' isn't SHA256\n")

    got = request(port, "POST", "/not-a-sha", body, auth)
    assert (got.status, got.body) == (412, b"Given hash 'not-a-sha' isn't sha256")

    got = request(port, "POST", f"/{sha256(body)}", body)
    assert (got.status, got.body) == (401, b"Authentication required!")
    assert got.headers["www-authenticate"].startswith("Basic")

    got = request(port, "POST", f"/{wrong}", body, auth)
    assert (got.status, got.body) == (
        412, f"Content sha256 {sha256(body)} doesn't match given sha256 {wrong}".encode())
    for answer in (got,):  # the detail stor knows beyond the old body is in a header
        assert "stor-reason" in answer.headers
