"""Issue 19, finding 7: say less to strangers — no version in ``Server``, ``nosniff`` on
answers that quote a request, no Python exception text in ``Stor-Reason``."""

import hashlib
import json

import pytest

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
