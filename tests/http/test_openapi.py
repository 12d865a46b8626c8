"""The OpenAPI document (``stor/openapi.json``, served at ``GET /openapi.json``) and
schemathesis against a live server: no 5xx, and no response outside the document.

schemathesis is synchronous: its CLI runs as a subprocess, and the explicit cases
in a thread, while the reactor serves stor.
"""

import base64
import json
import re
import subprocess
import sys
from collections import Counter
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from openapi_spec_validator import validate
from twisted.internet.threads import deferToThread

from support.helpers import AUTH, raw_request, sha256
from stor import __version__
from stor.core import layout
from stor.http.app import StorApp

# The files the document's examples name: the test places them by hand so GETs hit.
EMPTY = b""
HELLO = b"hello world\n"
UPLOAD = b"hello stor\n"  # the requestBody example: its SHA is an example too, not placed
NO_ROOM = b"no room for me\n"
MAX_UPLOAD = 64  # small, so fuzzed bodies reach 413

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]
MAX_EXAMPLES = 50
SEED = 20240917


def document() -> dict[str, Any]:
    """The document as kept in the repository (and shipped as package data)."""
    return json.loads(files("stor.http").joinpath("openapi.json").read_bytes())


def place(storage_dirs: list[list[str]], data: bytes) -> str:
    """Store ``data`` on both members of the first pair, as the old service would have."""
    sha = sha256(data)
    for storage in storage_dirs[0]:
        path = Path(layout.file_path(storage, sha))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return sha


def test_document_is_valid_openapi_3():
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.")


def test_document_describes_every_route():
    """Every Klein rule and method (``<segment>`` is ``{sha}``) has an operation, and
    the document invents none: a route added without its documentation fails here."""
    routed = set()
    for rule in StorApp.app.url_map.iter_rules():
        path = rule.rule.replace("<segment>", "{sha}")
        routed |= {(path, m.lower()) for m in rule.methods or ()}
    documented = {(path, m) for path, item in document()["paths"].items()
                  for m in item if m != "parameters"}
    assert routed - {(p, "options") for p, _ in routed} == documented


def test_document_examples_are_what_the_test_places():
    sha = document()["components"]["parameters"]["sha"]["examples"]
    values = {e["value"] for e in sha.values()}
    assert {sha256(EMPTY), sha256(HELLO), sha256(HELLO).upper(), sha256(UPLOAD)} == values
    body = document()["paths"]["/{sha}"]["post"]["requestBody"]["content"]
    assert body["application/octet-stream"]["example"].encode() == UPLOAD


@pytest_twisted.ensureDeferred
async def test_served_document_is_the_repository_one_with_this_version(server):
    response, body = await raw_request("GET", server.at("/openapi.json"))
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    served = json.loads(body)
    validate(served)
    assert served["info"]["version"] == __version__
    repo = document()
    repo["info"]["version"] = __version__
    assert served == repo


@pytest.fixture
def fuzz_config(config_dict: dict[str, Any]) -> dict[str, Any]:
    return {**config_dict, "max_upload_size": MAX_UPLOAD}


@pytest.mark.acceptance('process')
@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_no_server_error_and_nothing_outside_the_document(
        start_server, fuzz_config, storage_dirs, tmp_path):
    for data in (EMPTY, HELLO):
        place(storage_dirs, data)
    server = await start_server(fuzz_config)
    har = tmp_path / "run.har"
    argv = [
        sys.executable, "-m", "schemathesis.cli", "run", server.at("/openapi.json"),
        "--checks", ",".join(CHECKS),
        "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--generation-database", "none",
        "--auth", ":".join(AUTH),  # the coverage phase still tries without and with wrong ones
        "--request-timeout", "10",
        "--report", "har", "--report-har-path", str(har),
        "--no-color",
    ]
    done = await deferToThread(subprocess.run, argv, cwd=tmp_path, capture_output=True,
                               text=True, timeout=180)
    assert done.returncode == 0, f"schemathesis failed:\n{done.stdout}\n{done.stderr}"

    # the run reached the answers worth checking, not only 404s
    seen: Counter[tuple[str, str, int]] = Counter()
    for entry in json.loads(har.read_text())["log"]["entries"]:
        path = entry["request"]["url"].split(server.url, 1)[1].split("?", 1)[0]
        route = "/{sha}" if re.fullmatch("/[0-9a-fA-F]{64}", path) else path
        seen[(entry["request"]["method"], route, entry["response"]["status"])] += 1
    for wanted in [("GET", "/{sha}", 200), ("GET", "/{sha}", 304), ("GET", "/{sha}", 404),
                   ("HEAD", "/{sha}", 200), ("HEAD", "/{sha}", 404),
                   ("POST", "/{sha}", 200), ("POST", "/{sha}", 201), ("POST", "/{sha}", 401),
                   ("POST", "/{sha}", 412), ("POST", "/{sha}", 413),
                   ("GET", "/", 200), ("GET", "/status", 200)]:
        assert seen[wanted], f"schemathesis never saw {wanted}: {sorted(seen)}"


def _explicit_cases(base_url: str, broken_url: str) -> list[str]:
    """Each documented answer once, on purpose; returns the failures."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance, response_headers_conformance, response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_headers_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_dict(document())
    hello, empty, upload = sha256(HELLO), sha256(EMPTY), sha256(UPLOAD)
    basic = "Basic " + base64.b64encode(":".join(AUTH).encode()).decode()
    wrong = "Basic " + base64.b64encode(b"writer:nope").decode()
    etag = f'"{hello}"'
    cases: list[tuple[str, str, str, dict[str, Any], int, str]] = [
        # (path, method, sha, extra, expected status, server)
        ("/", "GET", "", {}, 200, base_url),
        ("/", "HEAD", "", {}, 200, base_url),
        ("/status", "GET", "", {}, 200, base_url),
        ("/status", "HEAD", "", {}, 200, base_url),
        ("/status", "GET", "", {}, 503, broken_url),
        ("/openapi.json", "GET", "", {}, 200, base_url),
        ("/metrics", "GET", "", {}, 200, base_url),
        ("/{sha}", "GET", hello, {}, 200, base_url),
        ("/{sha}", "GET", hello.upper(), {}, 200, base_url),
        ("/{sha}", "GET", empty, {}, 200, base_url),
        ("/{sha}", "GET", hello, {"headers": {"Range": "bytes=0-3"}}, 206, base_url),
        ("/{sha}", "GET", hello, {"headers": {"Range": "bytes=-4", "If-Range": etag}}, 206, base_url),
        ("/{sha}", "GET", hello, {"headers": {"Range": "bytes=0-3", "If-Range": '"x"'}}, 200, base_url),
        ("/{sha}", "GET", hello, {"headers": {"Range": "bytes=100-"}}, 416, base_url),
        ("/{sha}", "GET", hello, {"headers": {"If-None-Match": etag}}, 304, base_url),
        ("/{sha}", "GET", hello, {"headers": {"If-None-Match": "*"}}, 304, base_url),
        ("/{sha}", "GET", "0" * 64, {}, 404, base_url),
        ("/{sha}", "GET", "not-a-sha", {}, 404, base_url),
        ("/{sha}", "HEAD", hello, {}, 200, base_url),
        ("/{sha}", "HEAD", hello, {"headers": {"Range": "bytes=2-"}}, 206, base_url),
        ("/{sha}", "HEAD", hello, {"headers": {"Range": "bytes=100-"}}, 416, base_url),
        ("/{sha}", "HEAD", hello, {"headers": {"If-None-Match": etag}}, 304, base_url),
        ("/{sha}", "HEAD", "0" * 64, {}, 404, base_url),
        ("/{sha}", "HEAD", "zz", {}, 404, base_url),
        ("/{sha}", "POST", "zz", {"headers": {"Authorization": basic}, "body": UPLOAD}, 412, base_url),
        ("/{sha}", "POST", upload, {"body": UPLOAD}, 401, base_url),
        ("/{sha}", "POST", upload, {"headers": {"Authorization": wrong}, "body": UPLOAD}, 401,
         base_url),
        ("/{sha}", "POST", upload, {"headers": {"Authorization": basic}, "body": HELLO}, 412,
         base_url),
        ("/{sha}", "POST", sha256(b"x" * 100),
         {"headers": {"Authorization": basic}, "body": b"x" * 100}, 413, base_url),
        ("/{sha}", "POST", upload, {"headers": {"Authorization": basic}, "body": UPLOAD}, 201,
         base_url),
        ("/{sha}", "POST", upload, {"headers": {"Authorization": basic}, "body": UPLOAD}, 200,
         base_url),
        ("/{sha}", "POST", sha256(NO_ROOM), {"headers": {"Authorization": basic}, "body": NO_ROOM},
         507, broken_url),
    ]
    failures = []
    for path, method, sha, extra, status, url in cases:
        params = {"sha": sha} if sha else {}
        case = schema[path][method].Case(path_parameters=params, media_type=(
            "application/octet-stream" if "body" in extra else None), **extra)
        label = f"{method} {path.replace('{sha}', sha[:12])} {extra.get('headers', {})} → {status}"
        try:
            # a 5xx asked for on purpose (503, 507) is documented: only the other checks apply
            response = case.call_and_validate(
                base_url=url, checks=checks if status < 500 else checks[1:])
        except Exception as e:  # schemathesis raises a group of check failures
            failures.append(f"{label}: {e}")
            continue
        if response.status_code != status:
            failures.append(f"{label}: got {response.status_code}")
    return failures


@pytest_twisted.ensureDeferred
async def test_every_documented_answer_matches_the_document(
        start_server, fuzz_config, storage_dirs, tmp_path):
    """What fuzzing may not reach (206, 416, 503, 507, ...) asked for on purpose."""
    for data in (EMPTY, HELLO):
        place(storage_dirs, data)
    server = await start_server(fuzz_config)
    missing = tmp_path / "missing"  # /status: 503; no pair writable: 507
    broken = await start_server({**fuzz_config,
                                 "storage_pairs": fuzz_config["storage_pairs"] + [[str(missing),
                                                                                   str(missing) + "2"]],
                                 "writable_pairs_regex": "^nothing-matches$"})
    failures = await deferToThread(_explicit_cases, server.url, broken.url)
    assert not failures, "\n".join(failures)
