"""The client as an operator uses it day to day (issue 21, item 13): delete, du, info,
a directory put, byte progress, and no empty ``.part`` after a signal."""

import json
import os
import signal
from pathlib import Path

import pytest

from support.client import Answer, FakeStor
from support.harness import stop as stop_stor
from support.harness import wait_for
from stor.client.progress import Progress
from test_client import AUTH, clean_env, make_file, start, start_stor, stor


@pytest.mark.acceptance('stor-command')
def test_sigterm_while_get_retries_leaves_no_empty_part(tmp_path: Path) -> None:
    fake = FakeStor(lambda seen: Answer(503, b"busy", {"Retry-After": "30"}))
    out = tmp_path / "out"
    sha = "ab" * 32
    try:
        proc = start("get", "--storage", fake.url, "-o", str(out), "--retries", "9", sha,
                     tmp_path=tmp_path)
        wait_for(lambda: fake.requests, "the first GET")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130
    finally:
        fake.close()
    assert os.listdir(out) == []  # the .part held no byte: nothing to resume from


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Stream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_of_one_big_put_shows_bytes_rate_and_eta() -> None:
    clock = _Clock()
    progress = Progress(None, _Stream(), "put", 1, False, clock=clock, total_bytes=300 * 2**20)
    progress.text()
    clock.now = 1.0
    progress.add_hashed(100 * 2**20)
    hashing = progress.text()
    assert "hashed 100.0 MiB/300.0 MiB" in hashing and "100.0 MiB/s" in hashing
    clock.now = 3.0
    progress.add_hashed(200 * 2**20)
    progress.add_bytes(100 * 2**20)
    sending = progress.text()
    assert "0/1 files" in sending
    assert "sent 100.0 MiB/300.0 MiB" in sending
    assert "ETA 0:02" in sending  # 200 MiB of 600 MiB of work left at 100 MiB/s


def test_progress_of_a_get_counts_bytes_against_the_sizes_learnt() -> None:
    clock = _Clock()
    progress = Progress(None, _Stream(), "get", 1, False, clock=clock)
    progress.text()
    progress.add_expected(300 * 2**20)
    clock.now = 2.0
    progress.add_bytes(100 * 2**20)
    text = progress.text()
    assert "100.0 MiB/300.0 MiB" in text and "50.0 MiB/s" in text and "ETA 0:04" in text


@pytest.mark.acceptance('stor-command', 'stor-process')
def test_put_of_a_directory_uploads_every_file_below_it(tmp_path: Path) -> None:
    server = start_stor(tmp_path / "stor")
    try:
        tree = tmp_path / "tree"
        (tree / "a" / "b").mkdir(parents=True)
        shas = {make_file(tree / "one", 1000, seed=1): "one",
                make_file(tree / "a" / "two", 2000, seed=2): "a/two",
                make_file(tree / "a" / "b" / "three", 3000, seed=3): "a/b/three"}
        url = f"http://127.0.0.1:{server.port}"
        done = stor("put", "--storage", url, "--auth", AUTH, str(tree))
        assert done.returncode == 0, done.stderr
        lines = sorted(line.split("  ") for line in done.stdout.splitlines())
        assert sorted((sha, str(tree / name), "201") for sha, name in shas.items()) == \
            [tuple(line) for line in lines]
    finally:
        stop_stor(server)


@pytest.mark.acceptance('stor-command', 'stor-process')
def test_delete_du_and_info_from_the_command_line(tmp_path: Path) -> None:
    server = start_stor(tmp_path / "stor", delete_auth="remover:remover_pass")
    try:
        url = f"http://127.0.0.1:{server.port}"
        path = tmp_path / "f"
        sha = make_file(path, 5000, seed=4)
        assert stor("put", "--storage", url, "--auth", AUTH, str(path)).returncode == 0

        du = stor("du", "--storage", url)
        assert du.returncode == 0, du.stderr
        config = json.loads(server.config_path.read_text())
        storages = [s for pair in config["storage_pairs"] for s in pair]
        assert [line.split()[-1] for line in du.stdout.splitlines()[1:]] == storages
        assert du.stdout.splitlines()[0].split() == ["used", "total", "free", "use%", "storage"]

        info = stor("info", "--storage", url)
        assert info.returncode == 0, info.stderr
        assert "version: 2." in info.stdout and "uptime:" in info.stdout
        for storage in storages:
            assert storage in info.stdout

        refused = stor("delete", "--storage", url, "--auth", "remover:wrong", sha)
        assert refused.returncode == 1 and "401" in refused.stderr
        gone = stor("delete", "--storage", url, "--auth", "remover:remover_pass", sha)
        assert (gone.returncode, gone.stdout) == (0, f"{sha}  {url}/{sha}  204\n")
        again = stor("delete", "--storage", url, "--auth", "remover:remover_pass", sha)
        assert again.returncode == 1 and "404" in again.stderr
        assert stor("get", "--storage", url, "-o", str(tmp_path / "o"), sha).returncode == 1
    finally:
        stop_stor(server)
