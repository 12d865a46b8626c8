"""Issue 19, finding 7: say less to strangers — no version in ``Server``, ``nosniff`` on
answers that quote a request, no Python exception text in ``Stor-Reason``."""

import hashlib
import json
import socket

import pytest

from support import fleet
from support.harness import AUTH_HEADER, request
from stor.config import parse_config
from stor.core.errors import ConfigError
from stor.http.answers import reason_header


BODY = b"served through the fast lane"
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.mark.acceptance('stor-process')
@pytest.mark.parametrize("configured, expected", [(None, "stor"), ("edge-7", "edge-7")])
def test_no_answer_names_twisted_or_a_version(stor_process, configured, expected) -> None:
    stor = stor_process(**({"server_header": configured} if configured else {}))
    answers = [request(stor.port, "POST", f"/{SHA}", BODY, {"Authorization": AUTH_HEADER})]
    for _ in range(3):  # the first GET warms the cache; later ones take the fast lane
        answers.append(request(stor.port, "GET", f"/{SHA}"))
    answers += [request(stor.port, "GET", p) for p in ("/", "/status", "/nothing", "/metrics")]
    answers.append(request(stor.port, "PUT", f"/{SHA}", b"x"))
    for answer in answers:
        assert answer.headers.get("server") == expected, answer.headers
        assert "twisted" not in json.dumps(answer.headers).lower()


@pytest.mark.acceptance('stor-process')
def test_answers_quoting_the_request_are_not_sniffed(stor_process) -> None:
    stor = stor_process()
    for method, path in [("GET", "/%3Cscript%3Ealert(1)%3C%2Fscript%3E"), ("GET", "/" + "a" * 64),
                         ("POST", "/%3Cb%3E")]:
        answer = request(stor.port, method, path, b"" if method == "POST" else None,
                         {"Authorization": AUTH_HEADER} if method == "POST" else None)
        assert answer.status in (404, 412), answer
        assert answer.headers.get("x-content-type-options") == "nosniff", answer.headers


def test_a_python_exception_text_never_reaches_stor_reason() -> None:
    assert reason_header(KeyError("/secret/path/of/the/host")) == b"internal error (logged)"
    assert b"/secret" not in reason_header(ValueError("/secret: Exceeds the limit (4300)"))


@pytest.mark.parametrize("value", ["", "a\r\nSet-Cookie: x=1", "x" * 201, 7])
def test_a_bad_server_header_is_a_config_error(tmp_path, value) -> None:
    with pytest.raises(ConfigError, match="server_header"):
        parse_config({"storage_pairs": [[str(tmp_path / "a"), str(tmp_path / "b")]],
                      "server_header": value})


def _get_from(source: str, port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from the loopback address ``source`` (the client the ACL judges)."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: stor\r\nAccept: application/json\r\n"
                  "Connection: close\r\n\r\n".encode())  # /status as JSON: every path
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


PROBES = ["/status", "/status/", "/metrics", "/status?format=json", "//status", "/%73tatus",
          "/metrics/", "/./status", "/STATUS", "/status%2F", "/metrics?x=1", "/metrics//",
          "//metrics/", "///status/?format=json", "/status/./", "/%2Fstatus", "/%73tatus/?format=json", "//%6detrics"]


@pytest.mark.acceptance('stor-process', 'haproxy', 'nginx')
@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_the_shipped_balancers_keep_storage_paths_to_the_operators_network(
        stor_process, haproxy, nginx, tmp_path, monkeypatch, balancer) -> None:
    """Finding 7: /status and /metrics name the storage paths, and the shipped configs keep
    them to the operators' network.  Here that network is 127.0.0.2 alone (the shipped
    ``127.0.0.0/8`` narrowed), so a client on 127.0.0.1 is a stranger: every spelling of
    those pages it tries shows no path, while 127.0.0.2 reads them."""
    shipped = fleet.HAPROXY_CONF if balancer == "haproxy" else fleet.NGINX_CONF
    text = shipped.read_text()
    assert "127.0.0.0/8" in text
    narrowed = tmp_path / shipped.name
    narrowed.write_text(text.replace("127.0.0.0/8", "127.0.0.2/32"))
    monkeypatch.setattr(fleet, "HAPROXY_CONF" if balancer == "haproxy" else "NGINX_CONF",
                        narrowed)
    stor = stor_process()
    front = (haproxy if balancer == "haproxy" else nginx)([stor.port])
    storage = stor.extra["storages"][0][0] if isinstance(stor.extra["storages"][0], list) \
        else stor.extra["storages"][0]
    for path in PROBES:
        status, body = _get_from("127.0.0.1", front.port, path)
        assert storage.encode() not in body, (path, status, body[:300])
        assert status in (400, 403, 404), (path, status)
    for path in ("/status", "/metrics"):
        status, body = _get_from("127.0.0.2", front.port, path)
        assert status == 200 and storage.encode() in body, (path, status, body[:300])
    status, _ = _get_from("127.0.0.1", front.port, "/health/ready")
    assert status == 200
