"""``stor put``, ``stor get``, ``stor verify``: the real command against a real stor process.

Black-box throughout: the command runs as a process, the tests look at its
exit status, its output lines and the files it leaves.  A relay between the
two watches the requests (``HEAD`` before ``POST``, ``Range`` on resume) and
breaks connections on purpose; a fake server misbehaves in ways a real stor
never does (wrong bytes, odd ranges, 503).
"""

import fcntl
import hashlib
import json
import os
import pty
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.client import Answer, FakeStor, Relay, Seen, ranged
from support.ports import refused_port
from support.harness import AUTH_HEADER, STOR, Stor, Stors, request, stop, wait_for
from support.helpers import file_sha, sha256

pytestmark = pytest.mark.acceptance('process', 'stor-command', 'stor-process')

AUTH = "writer:writer_pass"
MiB = 1024 * 1024


def start_stor(root: Path, **config: object) -> Stor:
    """A ``twistd -n stor`` process with two pairs of storages under ``root``."""
    return Stors(root).start(**config)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stor]:
    """One stor for the module's tests (each test uses its own files, so none sees another's)."""
    proc = start_stor(tmp_path_factory.mktemp("stor"))
    yield proc
    stop(proc)


@pytest.fixture
def url(server: Stor) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def relay(server: Stor) -> Iterator[Relay]:
    r = Relay(server.port)
    yield r
    r.close()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STOR_URL", "STOR_AUTH", "CONFIG_FILE")}
    env.update(extra)
    return env


def stor(*args: str, stdin: str = "", env: dict[str, str] | None = None,
         cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``stor`` command to its end (stdin is never a terminal here)."""
    return subprocess.run([STOR, *args], input=stdin, capture_output=True, text=True,
                          env=env if env is not None else clean_env(), cwd=cwd, timeout=timeout)


def start(*args: str, tmp_path: Path) -> subprocess.Popen[str]:
    """Start the ``stor`` command in the background (output in files under ``tmp_path``)."""
    return subprocess.Popen([STOR, *args], stdin=subprocess.DEVNULL, text=True,
                            stdout=open(tmp_path / "bg.out", "w"), stderr=open(tmp_path / "bg.err", "w"),
                            env=clean_env())


def rows(text: str) -> list[list[str]]:
    """Output lines split into their columns (two spaces apart)."""
    return [line.split("  ") for line in text.splitlines() if line]


def make_file(path: Path, size: int, seed: int = 0) -> str:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return sha256(data)


def store(url: str, tmp_path: Path, size: int, seed: int) -> tuple[str, bytes]:
    """Upload ``size`` random bytes with a plain POST (no ``stor put``); (sha, bytes)."""
    data = random.Random(seed).randbytes(size)
    sha = sha256(data)
    port = int(url.rsplit(":", 1)[1])
    answer = request(port, "POST", f"/{sha}", body=data, headers={"Authorization": AUTH_HEADER})
    assert answer.status in (200, 201), answer
    return sha, data


def stored(url: str, sha: str) -> int:
    port = int(url.rsplit(":", 1)[1])
    return request(port, "HEAD", f"/{sha}").status


# --- the acceptance test --------------------------------------------------------------------

def test_put_then_get_round_trips_100_files_of_mixed_sizes_in_parallel(
        url: str, server: Stor, tmp_path: Path) -> None:
    rng = random.Random(100)
    sizes = [64 * MiB] * 2 + [16 * MiB] * 2 + [4 * MiB] * 4 + [MiB] * 8 + [1, 2]
    sizes += [rng.randint(1, 256 * 1024) for _ in range(100 - len(sizes))]
    src = tmp_path / "src"
    src.mkdir()
    expected = {}
    for i, size in enumerate(sizes):
        path = src / f"f{i:03d}"
        path.write_bytes(os.urandom(size))
        expected[file_sha(path)] = size

    put = stor("put", "--storage", url, "--auth", AUTH, "-j", "8", *sorted(map(str, src.iterdir())))
    assert put.returncode == 0, put.stderr
    assert put.stderr == ""
    put_rows = rows(put.stdout)
    assert len(put_rows) == 100 and {r[2] for r in put_rows} == {"201"}
    assert {r[0] for r in put_rows} == set(expected)
    for sha_, name, _ in put_rows:
        assert file_sha(Path(name)) == sha_

    relay = Relay(server.port)
    try:
        out = tmp_path / "out"
        get = stor("get", "--storage", relay.url, "-j", "8", "-o", str(out), stdin=put.stdout)
    finally:
        relay.close()
    assert get.returncode == 0, get.stderr
    assert get.stderr == ""
    get_rows = rows(get.stdout)
    assert len(get_rows) == 100 and {r[2] for r in get_rows} == {"200"}
    assert sorted(os.listdir(out)) == sorted(expected)  # no .part left behind
    for sha_, size in expected.items():
        assert (out / sha_).stat().st_size == size
        assert file_sha(out / sha_) == sha_
    assert relay.max_open > 1  # transfers ran side by side
    assert sorted(r.split()[1] for r in relay.methods()) == sorted(expected)


# --- put ---------------------------------------------------------------------------------

def test_put_prints_sha_file_status_and_stores_the_file(url: str, tmp_path: Path) -> None:
    path = tmp_path / "a file"
    sha = make_file(path, 5000, seed=1)
    done = stor("put", "--storage", url, "--auth", AUTH, str(path))
    assert done.returncode == 0
    assert done.stdout == f"{sha}  {path}  201\n"
    assert done.stderr == ""
    assert stored(url, sha) == 200


def test_put_asks_head_first_and_skips_what_is_stored(relay: Relay, url: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    sha = make_file(path, 100_000, seed=2)
    first = stor("put", "--storage", relay.url, "--auth", AUTH, str(path))
    second = stor("put", "--storage", relay.url, "--auth", AUTH, str(path))
    assert rows(first.stdout) == [[sha, str(path), "201"]]
    assert rows(second.stdout) == [[sha, str(path), "200"]]
    assert second.returncode == 0
    assert relay.methods() == [f"HEAD {sha}", f"POST {sha}", f"HEAD {sha}"]


def test_put_uploads_when_the_host_is_503_for_s3_unknown(tmp_path: Path) -> None:
    """A host whose S3 is down answers HEAD of a file it lacks 503 ``Stor-S3: unavailable``:
    that is "not stored here", so the file is uploaded (and a second put finds it)."""
    from s3_peer import refused_port

    proc = start_stor(tmp_path / "stor", s3_enabled=1, s3_credentials={
        "access_key": "AKIAEXAMPLE", "secret_key": "secret",
        "host": f"127.0.0.1:{refused_port()}"})
    try:
        url = f"http://127.0.0.1:{proc.port}"
        path = tmp_path / "f"
        sha = make_file(path, 3000, seed=30)
        assert stored(url, sha) == 503
        first = stor("put", "--storage", url, "--auth", AUTH, str(path))
        second = stor("put", "--storage", url, "--auth", AUTH, str(path))
    finally:
        stop_stor(proc)
    assert (first.returncode, rows(first.stdout)) == (0, [[sha, str(path), "201"]])
    assert (second.returncode, rows(second.stdout)) == (0, [[sha, str(path), "200"]])


def test_put_reads_url_and_credentials_from_the_environment(url: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    sha = make_file(path, 10, seed=3)
    done = stor("put", str(path), env=clean_env(STOR_URL=url, STOR_AUTH=AUTH))
    assert (done.returncode, rows(done.stdout)) == (0, [[sha, str(path), "201"]])


def test_put_takes_credentials_from_the_url(url: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    sha = make_file(path, 11, seed=4)
    with_user = url.replace("http://", f"http://{AUTH}@")
    done = stor("put", "--storage", with_user + "/", str(path))
    assert (done.returncode, rows(done.stdout)) == (0, [[sha, str(path), "201"]])


@pytest.mark.parametrize("auth", [None, "writer:wrong"])
def test_put_without_valid_credentials_fails_with_401_and_stores_nothing(
        url: str, tmp_path: Path, auth: str | None) -> None:
    path = tmp_path / "f"
    sha = make_file(path, 1000, seed=5)
    done = stor("put", "--storage", url, *(["--auth", auth] if auth else []), str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(path), "401"]
    assert stored(url, sha) == 404


def test_put_reports_unreadable_files_and_still_uploads_the_rest(url: str, tmp_path: Path) -> None:
    good = tmp_path / "good"
    sha = make_file(good, 1234, seed=6)
    missing = tmp_path / "missing"
    unreadable = tmp_path / "fifo"
    os.mkfifo(unreadable)  # not a regular file: nothing to hash (a directory is put file by file)
    done = stor("put", "--storage", url, "--auth", AUTH, str(missing), str(unreadable), str(good))
    assert done.returncode == 1
    assert rows(done.stdout) == [[sha, str(good), "201"]]
    failures = {name: (sha_, status, reason) for sha_, name, status, reason in rows(done.stderr)}
    assert failures.keys() == {str(missing), str(unreadable)}
    assert failures[str(missing)][:2] == ("-", "error") and "No such file" in failures[str(missing)][2]
    assert failures[str(unreadable)] == ("-", "error", "not a regular file")


def test_put_of_a_file_above_max_upload_size_fails_with_413(tmp_path: Path) -> None:
    small_server = start_stor(tmp_path / "stor", max_upload_size=1000)
    try:
        path = tmp_path / "big"
        sha = make_file(path, 5000, seed=7)
        done = stor("put", "--storage", f"http://127.0.0.1:{small_server.port}", "--auth", AUTH,
                    str(path))
    finally:
        stop(small_server)
    assert done.returncode == 1
    assert [r[:3] for r in rows(done.stderr)] == [[sha, str(path), "413"]]


def test_put_of_a_file_changed_while_uploading_fails_412_and_stores_nothing(
        server: Stor, url: str, tmp_path: Path) -> None:
    path = tmp_path / "growing"
    sha = make_file(path, 32 * MiB, seed=8)
    relay = Relay(server.port, stall_upload_after=MiB)
    try:
        proc = start("put", "--storage", relay.url, "--auth", AUTH, str(path), tmp_path=tmp_path)
        assert relay.stalled.wait(30)
        with open(path, "r+b") as f:  # far past what can be read ahead while the upload is held
            f.seek(28 * MiB)
            f.write(b"\0" * (4 * MiB))
        relay.release()
        assert proc.wait(60) == 1
    finally:
        relay.close()
    [row] = rows((tmp_path / "bg.err").read_text())
    assert row[:3] == [sha, str(path), "412"]
    assert "changed while uploading" in row[3]
    assert relay.methods() == [f"HEAD {sha}", f"POST {sha}"]  # not retried
    assert stored(url, sha) == 404


def test_put_gives_up_on_an_upload_that_stops_moving(server: Stor, url: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    sha = make_file(path, 32 * MiB, seed=32)
    relay = Relay(server.port, stall_upload_after=MiB)
    try:
        done = stor("put", "--storage", relay.url, "--auth", AUTH, "--timeout", "1",
                    "--retries", "0", str(path))
    finally:
        relay.close()
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(path), "error"]
    assert "upload stalled" in row[3]
    assert stored(url, sha) == 404


def test_put_retries_a_412_when_the_file_did_not_change(tmp_path: Path) -> None:
    fake = FakeStor(lambda seen: Answer(404) if seen.method == "HEAD" else Answer(412, b"damaged"))
    try:
        path = tmp_path / "f"
        sha = make_file(path, 3000, seed=9)
        done = stor("put", "--storage", fake.url, "--auth", AUTH, "--retries", "1", str(path))
    finally:
        fake.close()
    assert done.returncode == 1
    assert [r[:3] for r in rows(done.stderr)] == [[sha, str(path), "412"]]
    assert [r.method for r in fake.requests] == ["HEAD", "POST", "HEAD", "POST"]


# --- get ---------------------------------------------------------------------------------

def test_get_writes_dir_sha_verified(url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 300_000, seed=10)
    out = tmp_path / "out" / "deeper"
    done = stor("get", "--storage", url, "-o", str(out), sha)
    assert (done.returncode, done.stderr) == (0, "")
    assert rows(done.stdout) == [[sha, str(out / sha), "200"]]
    assert (out / sha).read_bytes() == data
    assert os.listdir(out) == [sha]


def test_get_reads_shas_from_stdin_first_field_and_skips_blanks_and_comments(
        url: str, tmp_path: Path) -> None:
    sha1, _ = store(url, tmp_path, 10, seed=11)
    sha2, _ = store(url, tmp_path, 20, seed=12)
    stdin = f"# from sha256sum\n{sha1}  some/file\n\n{sha2.upper()}\n{sha1}  again\n"
    done = stor("get", "--storage", url, "-o", str(tmp_path / "out"), stdin=stdin)
    assert done.returncode == 0, done.stderr
    assert sorted(r[0] for r in rows(done.stdout)) == sorted([sha1, sha2])  # each once
    assert sorted(os.listdir(tmp_path / "out")) == sorted([sha1, sha2])


def test_get_of_a_missing_sha_fails_404_without_retrying_and_leaves_nothing(
        relay: Relay, tmp_path: Path) -> None:
    sha = sha256(b"never stored")
    out = tmp_path / "out"
    done = stor("get", "--storage", relay.url, "-o", str(out), sha)
    assert done.returncode == 1
    assert done.stdout == ""
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(out / sha), "404"]
    assert os.listdir(out) == []
    assert relay.methods() == [f"GET {sha}"]


def test_get_goes_on_after_a_failed_item_and_exits_1(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, 1, seed=13)
    missing = sha256(b"missing")
    done = stor("get", "--storage", url, "-o", str(tmp_path / "out"), missing, sha)
    assert done.returncode == 1
    assert [r[0] for r in rows(done.stdout)] == [sha]
    assert [r[0] for r in rows(done.stderr)] == [missing]


def test_get_resumes_with_range_when_the_connection_drops_mid_file(
        server: Stor, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 8 * MiB, seed=14)
    relay = Relay(server.port, cut_after=3 * MiB)
    try:
        out = tmp_path / "out"
        done = stor("get", "--storage", relay.url, "-o", str(out), sha)
    finally:
        relay.close()
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [[sha, str(out / sha), "206"]]
    first, second = relay.requests
    assert "range" not in first.headers
    resumed_at = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < 3 * MiB
    assert (out / sha).read_bytes() == data


def test_get_killed_mid_file_keeps_the_part_and_the_next_run_resumes_it(
        server: Stor, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 8 * MiB, seed=15)
    out = tmp_path / "out"
    part = out / f".{sha}.part"
    stalling = Relay(server.port, stall_after=2 * MiB)
    try:
        proc = start("get", "--storage", stalling.url, "-o", str(out), sha, tmp_path=tmp_path)
        assert stalling.stalled.wait(30)
        wait_for(lambda: part.exists() and part.stat().st_size > MiB, "the .part to fill")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stalling.close()
    kept = part.stat().st_size
    assert part.read_bytes() == data[:kept]
    assert not (out / sha).exists()

    relay = Relay(server.port)
    try:
        done = stor("get", "--storage", relay.url, "-o", str(out), sha)
    finally:
        relay.close()
    assert done.returncode == 0, done.stderr
    assert rows(done.stdout) == [[sha, str(out / sha), "206"]]
    assert [r.headers.get("range") for r in relay.requests] == [f"bytes={kept}-"]
    assert (out / sha).read_bytes() == data
    assert not part.exists()


def test_get_interrupted_exits_130_and_keeps_the_part(server: Stor, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 8 * MiB, seed=16)
    out = tmp_path / "out"
    part = out / f".{sha}.part"
    stalling = Relay(server.port, stall_after=2 * MiB)
    try:
        proc = start("get", "--storage", stalling.url, "-o", str(out), sha, tmp_path=tmp_path)
        assert stalling.stalled.wait(30)
        wait_for(lambda: part.exists() and part.stat().st_size > MiB, "the .part to fill")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
    finally:
        stalling.close()
    assert "interrupted" in (tmp_path / "bg.err").read_text()
    assert part.read_bytes() == data[:part.stat().st_size]
    assert not (out / sha).exists()


def test_get_gives_up_on_a_silent_server_after_timeout_and_keeps_the_part(
        server: Stor, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 8 * MiB, seed=17)
    out = tmp_path / "out"
    relay = Relay(server.port, stall_after=2 * MiB)
    try:
        done = stor("get", "--storage", relay.url, "-o", str(out), "--timeout", "1",
                    "--retries", "0", sha)
    finally:
        relay.close()
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(out / sha), "error"]
    assert "no data for 1 s" in row[3]
    part = out / f".{sha}.part"
    assert 0 < part.stat().st_size < len(data)


def test_get_restarts_from_zero_when_the_resumed_file_does_not_hash(tmp_path: Path) -> None:
    data = random.Random(18).randbytes(200_000)
    sha = sha256(data)

    def answer(seen: Seen) -> Answer:  # ranges answered with the right length, wrong bytes
        a = ranged(data, seen)
        return Answer(206, bytes(len(a.body)), a.headers) if a.status == 206 else a

    fake = FakeStor(answer)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{sha}.part").write_bytes(data[:50_000])
    try:
        done = stor("get", "--storage", fake.url, "-o", str(out), sha)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert [r.headers.get("range") for r in fake.requests] == ["bytes=50000-", None]
    assert rows(done.stdout) == [[sha, str(out / sha), "200"]]
    assert (out / sha).read_bytes() == data
    assert os.listdir(out) == [sha]


def test_get_fails_mismatch_when_the_server_keeps_sending_wrong_bytes(tmp_path: Path) -> None:
    data = b"the real content"
    sha = sha256(data)
    fake = FakeStor(lambda seen: Answer(200, b"something else!"))
    out = tmp_path / "out"
    try:
        done = stor("get", "--storage", fake.url, "-o", str(out), "--retries", "2", sha)
    finally:
        fake.close()
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(out / sha), "mismatch"]
    assert sha256(b"something else!") in row[3]
    assert len(fake.requests) == 3
    assert os.listdir(out) == []  # neither the wrong file nor an empty .part


def test_get_restarts_from_zero_when_the_server_ignores_range(tmp_path: Path) -> None:
    data = random.Random(19).randbytes(100_000)
    sha = sha256(data)
    fake = FakeStor(lambda seen: Answer(200, data))
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{sha}.part").write_bytes(b"stale bytes of some earlier attempt")
    try:
        done = stor("get", "--storage", fake.url, "-o", str(out), sha)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert [r.headers.get("range") for r in fake.requests] == ["bytes=35-"]
    assert (out / sha).read_bytes() == data


def test_get_restarts_from_zero_on_a_content_range_that_does_not_continue_the_part(
        tmp_path: Path) -> None:
    data = random.Random(20).randbytes(100_000)
    sha = sha256(data)

    def answer(seen: Seen) -> Answer:  # answers every Range from byte 10
        if "range" in seen.headers:
            return Answer(206, data[10:], {"Content-Range": f"bytes 10-{len(data) - 1}/{len(data)}"})
        return Answer(200, data)

    fake = FakeStor(answer)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{sha}.part").write_bytes(data[:1000])
    try:
        done = stor("get", "--storage", fake.url, "-o", str(out), sha)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert [r.headers.get("range") for r in fake.requests] == ["bytes=1000-", None]
    assert (out / sha).read_bytes() == data


def test_get_restarts_from_zero_when_the_part_is_longer_than_the_file(
        relay: Relay, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 1000, seed=21)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{sha}.part").write_bytes(b"x" * 5000)  # the real stor answers 416
    done = stor("get", "--storage", relay.url, "-o", str(out), sha)
    assert done.returncode == 0, done.stderr
    assert [r.headers.get("range") for r in relay.requests] == ["bytes=5000-", None]
    assert (out / sha).read_bytes() == data


def test_get_finishes_a_complete_part_without_asking(relay: Relay, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 1000, seed=22)
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{sha}.part").write_bytes(data)
    done = stor("get", "--storage", relay.url, "-o", str(out), sha)
    assert (done.returncode, rows(done.stdout)) == (0, [[sha, str(out / sha), "present"]])
    assert relay.requests == []
    assert os.listdir(out) == [sha]


def test_get_skips_a_file_already_there_and_replaces_a_wrong_one(
        relay: Relay, url: str, tmp_path: Path) -> None:
    sha, data = store(url, tmp_path, 1000, seed=23)
    out = tmp_path / "out"
    assert stor("get", "--storage", relay.url, "-o", str(out), sha).returncode == 0
    again = stor("get", "--storage", relay.url, "-o", str(out), sha)
    assert rows(again.stdout) == [[sha, str(out / sha), "present"]]
    assert len(relay.requests) == 1
    (out / sha).write_bytes(b"damaged")
    fixed = stor("get", "--storage", relay.url, "-o", str(out), sha)
    assert rows(fixed.stdout) == [[sha, str(out / sha), "200"]]
    assert (out / sha).read_bytes() == data


def test_get_retries_503_with_backoff_then_succeeds(tmp_path: Path) -> None:
    data = b"eventually"
    sha = sha256(data)
    fake = FakeStor(lambda seen: Answer(503, b"busy") if len(fake.requests) < 3 else Answer(200, data))
    try:
        done = stor("get", "--storage", fake.url, "-o", str(tmp_path), sha)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert len(fake.requests) == 3
    assert (tmp_path / sha).read_bytes() == data


def test_get_honours_retry_after(tmp_path: Path) -> None:
    data = b"later"
    sha = sha256(data)
    times: list[float] = []

    def answer(seen: Seen) -> Answer:
        times.append(time.monotonic())
        return Answer(503, headers={"Retry-After": "1"}) if len(times) == 1 else Answer(200, data)

    fake = FakeStor(answer)
    try:
        done = stor("get", "--storage", fake.url, "-o", str(tmp_path), sha)
    finally:
        fake.close()
    assert done.returncode == 0, done.stderr
    assert times[1] - times[0] >= 1.0  # the backoff alone would wait at most 0.5 s


def test_get_reports_503_once_retries_are_used_up(tmp_path: Path) -> None:
    sha = sha256(b"x")
    fake = FakeStor(lambda seen: Answer(503, b"busy"))
    try:
        done = stor("get", "--storage", fake.url, "-o", str(tmp_path), "--retries", "0", sha)
    finally:
        fake.close()
    assert done.returncode == 1
    assert [r[:3] for r in rows(done.stderr)] == [[sha, str(tmp_path / sha), "503"]]
    assert len(fake.requests) == 1


def test_get_from_a_server_that_is_not_there_fails_connection_refused(tmp_path: Path) -> None:
    sha = sha256(b"x")
    port = refused_port()
    done = stor("get", "--storage", f"http://127.0.0.1:{port}", "-o", str(tmp_path),
                "--retries", "1", sha)
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:4] == [sha, str(tmp_path / sha), "error", "connection refused"]


def test_get_refuses_a_part_another_get_is_writing(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, 100, seed=24)
    out = tmp_path / "out"
    out.mkdir()
    with open(out / f".{sha}.part", "wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = stor("get", "--storage", url, "-o", str(out), sha)
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:3] == [sha, str(out / sha), "locked"]
    assert not (out / sha).exists()


# --- verify ------------------------------------------------------------------------------

def test_verify_downloads_hashes_and_keeps_nothing(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, 2 * MiB, seed=25)
    work = tmp_path / "cwd"
    work.mkdir()
    done = stor("verify", "--storage", url, sha, cwd=work)
    assert (done.returncode, done.stderr) == (0, "")
    assert rows(done.stdout) == [[sha, f"{url}/{sha}", "200"]]
    assert os.listdir(work) == []


def test_verify_exits_1_on_a_missing_sha(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, 10, seed=26)
    missing = sha256(b"missing too")
    done = stor("verify", "--storage", url, sha, missing)
    assert done.returncode == 1
    assert [r[0] for r in rows(done.stdout)] == [sha]
    assert [r[:3] for r in rows(done.stderr)] == [[missing, f"{url}/{missing}", "404"]]


def test_verify_reports_a_mismatch_at_once(tmp_path: Path) -> None:
    sha = sha256(b"expected")
    fake = FakeStor(lambda seen: Answer(200, b"corrupted"))
    try:
        done = stor("verify", "--storage", fake.url, sha, cwd=tmp_path)
    finally:
        fake.close()
    assert done.returncode == 1
    [row] = rows(done.stderr)
    assert row[:3] == [sha, f"{fake.url}/{sha}", "mismatch"]
    assert len(fake.requests) == 1
    assert os.listdir(tmp_path) == []


# --- the command line --------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["get", "not-a-sha"], "not a sha256"),
    (["get", "--storage", "ftp://host", "0" * 64], "http:// or https://"),
    (["put", "--auth", "no-colon", "f"], "USER:PASS"),
    (["get", "-j", "0", "0" * 64], "at least 1"),
    (["get", "--retries", "-1", "0" * 64], "negative"),
    (["put"], "required"),
])
def test_usage_errors_exit_2_before_any_request(args: list[str], message: str) -> None:
    fake = FakeStor(lambda seen: Answer(500))
    try:
        done = stor(*args, env=clean_env(STOR_URL=fake.url))
    finally:
        fake.close()
    assert done.returncode == 2
    assert message in done.stderr
    assert fake.requests == []


def test_malformed_sha_on_stdin_is_a_usage_error(url: str, tmp_path: Path) -> None:
    good, _ = store(url, tmp_path, 5, seed=27)
    done = stor("get", "--storage", url, "-o", str(tmp_path / "out"), stdin=f"{good}\nzzz\n")
    assert done.returncode == 2
    assert "'zzz'" in done.stderr
    assert not (tmp_path / "out" / good).exists()


def test_progress_bar_on_a_terminal(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, MiB, seed=28)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([STOR, "get", "--storage", url, "-o", str(tmp_path / "out"), sha],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary,
                            env=clean_env())
    os.close(secondary)
    stdout, _ = proc.communicate(timeout=60)
    screen = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the terminal's other end is closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(primary)
    assert proc.returncode == 0
    assert b"\r" in screen and b"1/1 files" in screen and b"1.0 MiB" in screen
    assert rows(stdout.decode()) == [[sha, str(tmp_path / "out" / sha), "200"]]


def test_quiet_when_stderr_is_not_a_terminal(url: str, tmp_path: Path) -> None:
    sha, _ = store(url, tmp_path, MiB, seed=29)
    done = stor("get", "--storage", url, "-o", str(tmp_path / "out"), sha)
    assert (done.returncode, done.stderr) == (0, "")


# --- memory ------------------------------------------------------------------------------

_MEASURE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss_kib(args: list[str]) -> int:
    """Run the command; its peak resident set size (KiB), from the kernel's own account.

    A small process in between starts it: a child's peak counts the memory of
    the process it was forked from, and pytest's is large.
    """
    done = subprocess.run([sys.executable, "-c", _MEASURE, STOR, *args], capture_output=True,
                          text=True, env=clean_env(), timeout=120)
    status, peak = map(int, done.stdout.split())
    assert status == 0, done.stderr
    return peak


def test_memory_stays_flat_for_a_64_mib_file(url: str, tmp_path: Path) -> None:
    big = tmp_path / "big"
    small = tmp_path / "small"
    big_sha = make_file(big, 64 * MiB, seed=30)
    small_sha = make_file(small, 1, seed=31)
    put_big = peak_rss_kib(["put", "--storage", url, "--auth", AUTH, str(big)])
    put_small = peak_rss_kib(["put", "--storage", url, "--auth", AUTH, str(small)])
    get_big = peak_rss_kib(["get", "--storage", url, "-o", str(tmp_path / "out"), big_sha])
    get_small = peak_rss_kib(["get", "--storage", url, "-o", str(tmp_path / "out"), small_sha])
    print(f"peak RSS KiB: put 64 MiB {put_big}, put 1 B {put_small}, "
          f"get 64 MiB {get_big}, get 1 B {get_small}")
    assert get_big - get_small < 16 * 1024
    assert put_big - put_small < 16 * 1024
    assert file_sha(tmp_path / "out" / big_sha) == big_sha
