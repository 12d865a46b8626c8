"""``stor scrub``: real files under tmp_path, the real command line."""

import fcntl
import hashlib
import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stor.cli import main as cli
from stor.core import layout
from stor.cli.scrub_progress import Progress
from stor.disk.locks import ShaLocks
from stor.disk.scrub import Report, Scrubber, Throttle, count
from stor.disk.temps import temp_dir
from support.harness import STOR
from support.helpers import flip, sha256

MiB = 1024 * 1024


class Host:
    """Two storage pairs and a config file naming them."""

    def __init__(self, root: Path, **extra: Any) -> None:
        self.root = root
        self.storages = [root / f"data{i}" for i in range(1, 5)]
        for s in self.storages:
            s.mkdir()
        self.pairs = [self.storages[0:2], self.storages[2:4]]
        self.config = root / "stor.json"
        self.write_config(**extra)

    def write_config(self, **extra: Any) -> None:
        doc = {"storage_pairs": [[str(a), str(b)] for a, b in self.pairs],
               "lock_dir": str(self.root / "locks"), **extra}
        self.config.write_text(json.dumps(doc))

    def store(self, data: bytes, pair: int = 0) -> tuple[Path, Path]:
        """Both replicas of ``data``, as an upload leaves them."""
        paths = tuple(self.put(s, data) for s in self.pairs[pair])
        return paths[0], paths[1]

    @staticmethod
    def put(storage: Path, data: bytes, sha: str | None = None) -> Path:
        path = Path(layout.file_path(str(storage), sha or sha256(data)))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def scrub(self, *args: str) -> int:
        return cli.main(["scrub", "--config", str(self.config), *args])


def dead_pid() -> int:
    """A pid that ran and is gone."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def json_report(host: Host, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = host.scrub("--json", *args)
    return code, json.loads(capsys.readouterr().out)


# -- the acceptance story ---------------------------------------------------


def test_clean_tree_exits_0(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.store(b"one")
    host.store(os.urandom(3 * MiB), pair=1)
    assert host.scrub() == 0
    captured = capsys.readouterr()
    assert "4 files" in captured.out and "no problems found" in captured.out
    assert captured.err == ""  # no progress bar when stderr is not a terminal


def test_flipped_byte_is_reported_corrupt_and_left_alone(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(100_000)
    a, b = host.store(data)
    flip(b, 500)
    rotten = b.read_bytes()
    assert host.scrub() == 1
    out = capsys.readouterr().out
    assert f"corrupt        {b}  [NOT repaired]" in out
    assert "1 problem(s) remain" in out
    assert b.read_bytes() == rotten and a.read_bytes() == data


def test_repair_mends_a_corrupt_replica_from_its_twin(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(2 * MiB + 3)
    a, b = host.store(data)
    os.utime(b, (1_500_000_000, 1_500_000_000))
    flip(a, 2 * MiB)
    assert host.scrub("--repair") == 0  # every problem found was repaired
    out = capsys.readouterr().out
    assert f"corrupt        {a}  [repaired]" in out and "every problem was repaired" in out
    assert a.read_bytes() == data == b.read_bytes()
    assert os.stat(a).st_mtime == 1_500_000_000
    assert host.scrub() == 0
    assert os.listdir(temp_dir(str(host.storages[0]))) == []


def test_missing_twin_is_reported_and_recreated(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    data = b"only one copy left"
    a, b = host.store(data, pair=1)
    b.unlink()
    code, report = json_report(host, capsys)
    assert code == 1
    assert report["problems"] == [
        {"path": str(b), "kind": "missing-twin", "repaired": False, "detail": f"present at {a}"}
    ]
    assert host.scrub("--repair") == 0
    assert b.read_bytes() == data
    assert host.scrub() == 0


def test_both_replicas_corrupt_is_unrecoverable_and_nothing_is_deleted(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(10_000)
    a, b = host.store(data)
    flip(a, 1)
    flip(b, 2)
    before = {a: a.read_bytes(), b: b.read_bytes()}
    code, report = json_report(host, capsys, "--repair")
    assert code == 1
    assert report["counts"]["unrecoverable"] == 2 and report["counts"]["corrupt"] == 0
    assert {p["path"] for p in report["problems"]} == {str(a), str(b)}
    assert not any(p["repaired"] for p in report["problems"])
    assert {a: a.read_bytes(), b: b.read_bytes()} == before


def test_corrupt_with_no_twin_is_unrecoverable(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = host.store(b"data")
    b.unlink()
    flip(a)
    code, report = json_report(host, capsys, "--repair")
    assert code == 1
    assert [p["kind"] for p in report["problems"]] == ["unrecoverable"]
    assert "is missing" in report["problems"][0]["detail"]
    assert a.exists() and not b.exists()


@pytest.mark.acceptance('process')
def test_stale_temps_are_reported_and_removed_live_ones_kept(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp = Path(temp_dir(str(host.storages[2])))
    tmp.mkdir()
    sha = "ab" * 32
    dead = tmp / f"{sha}.{dead_pid()}.00000000.tmp"
    idle = tmp / f"{sha}.{os.getpid()}.11111111.tmp"
    live = tmp / f"{sha}.{os.getpid()}.22222222.tmp"
    for f in (dead, idle, live):
        f.write_bytes(b"partial upload")
        os.utime(f, (time.time() - 7200, time.time() - 7200))  # idle for two hours
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # as its writer holds it, however long it pauses
    try:
        code, report = json_report(host, capsys)
    finally:
        held_for_repair = held
    assert code == 1
    assert sorted(p["path"] for p in report["problems"]) == sorted([str(dead), str(idle)])
    assert report["counts"]["stale-temp"] == 2
    assert dead.exists()  # reported only
    assert host.scrub("--repair") == 0
    assert sorted(os.listdir(tmp)) == [live.name]
    os.close(held_for_repair)


def test_a_temp_file_just_created_is_not_stale(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    tmp = Path(temp_dir(str(host.storages[0])))
    tmp.mkdir()
    new = tmp / f"{'cd' * 32}.{os.getpid()}.33333333.tmp"
    new.write_bytes(b"x")  # its writer may be about to take the lock
    assert host.scrub() == 0
    os.utime(new, (time.time() - 60, time.time() - 60))
    assert host.scrub() == 1


def test_json_summary(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    good = os.urandom(5000)
    host.store(good)
    _, bad = host.store(b"rotten", pair=1)
    flip(bad)
    code, report = json_report(host, capsys)
    assert code == 1
    assert report["ok"] is False
    assert report["files"] == 4
    assert report["bytes"] == 2 * len(good) + 2 * len(b"rotten")
    assert report["storages"] == [str(s) for s in host.storages]
    assert isinstance(report["seconds"], float)
    assert report["counts"] == {"corrupt": 1, "unrecoverable": 0, "missing-twin": 0,
                                "misplaced": 0, "stale-temp": 0, "unreadable": 0, "symlink": 0}
    assert report["remaining"] == 1
    assert report["problems"][0]["path"] == str(bad)
    assert report["problems"][0]["kind"] == "corrupt"
    assert report["problems"][0]["repaired"] is False

    code, report = json_report(host, capsys, "--repair")
    assert code == 0 and report["ok"] is True
    assert report["repaired"]["corrupt"] == 1 and report["remaining"] == 0


def test_misplaced_files_are_reported_other_files_ignored(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    data = b"somewhere else"
    sha = sha256(data)
    s = host.storages[0]
    wrong_dir = s / "00" / "00" / "00" / f"{sha.upper()}.dat"
    lower_case = Path(layout.file_path(str(s), sha)).with_name(f"{sha}.dat")
    not_a_sha = s / "AB" / "CD" / "EF" / "notes.dat"
    for p in (wrong_dir, lower_case, not_a_sha):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (s / "README").write_text("not stor's")
    (s / "lost+found").mkdir()
    (s / "lost+found" / "#1234.dat").write_bytes(b"fsck's business")
    code, report = json_report(host, capsys, "--repair")
    assert code == 1
    misplaced = {p["path"]: p for p in report["problems"]}
    assert set(misplaced) == {str(wrong_dir), str(lower_case), str(not_a_sha)}
    assert all(p["kind"] == "misplaced" and not p["repaired"] for p in misplaced.values())
    assert misplaced[str(not_a_sha)]["detail"] == "name is not a sha256"
    assert misplaced[str(wrong_dir)]["detail"] == f"belongs at {layout.file_path(str(s), sha)}"
    assert report["files"] == 0
    assert wrong_dir.exists() and lower_case.exists() and not_a_sha.exists()  # never deleted


def test_naming_one_storage_limits_the_walk(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.store(b"pair zero")
    _, bad = host.store(b"pair one", pair=1)
    flip(bad)
    code, report = json_report(host, capsys, str(host.storages[0]))
    assert code == 0
    assert report["storages"] == [str(host.storages[0])] and report["files"] == 1
    code, report = json_report(host, capsys, str(host.storages[3]) + "/")  # spelled differently
    assert code == 1 and report["storages"] == [str(host.storages[3])]


def test_a_named_storage_still_checks_its_twin(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = host.store(b"x")
    b.unlink()
    assert host.scrub(str(host.storages[0])) == 1
    assert host.scrub(str(host.storages[1])) == 0  # nothing on it to check
    assert host.scrub("--repair", str(host.storages[0])) == 0
    assert b.read_bytes() == b"x"


def test_a_failed_repair_is_reported_and_the_twin_storage_never_created(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = host.store(b"x")
    gone = host.storages[1]
    b.unlink()
    for d in sorted(gone.rglob("*"), reverse=True):
        d.rmdir()
    gone.rmdir()  # the twin's disk is not mounted
    code, report = json_report(host, capsys, "--repair", str(host.storages[0]))
    assert code == 1
    (problem,) = report["problems"]
    assert problem["kind"] == "missing-twin" and problem["repaired"] is False
    assert "repair failed" in problem["detail"]
    assert not gone.exists()


# -- errors: exit 2 ---------------------------------------------------------


def test_unknown_storage_exits_2(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    assert host.scrub("/nowhere/data9") == 2
    err = capsys.readouterr().err
    assert "/nowhere/data9 is not a storage in the config" in err


def test_broken_config_exits_2_with_the_config_error(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.config.write_text(json.dumps({"storage_pairs": [["/mnt/data1"]]}))
    assert host.scrub() == 2
    err = capsys.readouterr().err
    assert err.startswith("stor scrub: config error: storage_pairs[0]: must be a list of two")
    assert len(err.strip().splitlines()) == 1


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIG_FILE", raising=False)
    assert cli.main(["scrub"]) == 2
    assert "no config file" in capsys.readouterr().err
    assert cli.main(["scrub", "--config", str(tmp_path / "absent.json")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_config_from_environment(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFIG_FILE", str(host.config))
    assert cli.main(["scrub"]) == 0


def test_unreadable_storage_exits_2(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.storages[2].rmdir()
    assert host.scrub() == 2
    assert f"storage {host.storages[2]} does not exist" in capsys.readouterr().err
    assert host.scrub(str(host.storages[0])) == 0  # scrub around a dead disk by naming the others


@pytest.mark.parametrize("rate", ["0", "-3", "fast", "inf"])
def test_bad_max_mbps_exits_2(host: Host, rate: str) -> None:
    with pytest.raises(SystemExit) as info:
        host.scrub("--max-mbps", rate)
    assert info.value.code == 2


# -- throttling and progress -------------------------------------------------


def test_max_mbps_throttles(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.store(os.urandom(4 * MiB))
    start = time.monotonic()
    assert host.scrub("--max-mbps", "8", str(host.storages[0])) == 0
    assert time.monotonic() - start >= 0.4  # 4 MiB at 8 MB/s is 0.52 s


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(1e3, 1e9),
    reads=st.lists(st.tuples(st.integers(0, 4 * MiB), st.floats(0, 0.5)), max_size=30),
)
def test_property_throttle_keeps_the_average_rate(rate: float, reads: list[tuple[int, float]]) -> None:
    """Whatever the chunk sizes and the time reads take, n bytes take at least
    (n - burst) / rate seconds; and the throttle never sleeps more than needed."""
    now = [0.0]
    slept = [0.0]

    def sleep(s: float) -> None:
        assert s >= 0
        now[0] += s
        slept[0] += s

    throttle = Throttle(rate, burst=MiB, clock=lambda: now[0], sleep=sleep)
    total = 0
    for size, read_time in reads:
        now[0] += read_time
        total += size
        throttle.consume(size)
    assert now[0] >= (total - MiB) / rate - 1e-6
    assert slept[0] <= total / rate + 1e-6


def test_no_throttle_never_sleeps() -> None:
    def sleep(s: float) -> None:
        raise AssertionError("slept")

    Throttle(None, sleep=sleep).consume(10**12)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_on_a_terminal_has_totals_percent_and_eta() -> None:
    now = [0.0]
    term = Terminal()
    progress = Progress(term, terminal=True, every=30, clock=lambda: now[0])
    progress.counted(10_000_000)
    progress.counted(10_000_000)  # within the redraw interval: not redrawn
    assert term.getvalue() == "\r\x1b[Kscrub: counting: 1 files, 10.0 MB so far"
    now[0] = 1.0
    progress.counting_done()
    now[0] = 3.0
    progress.add_bytes(10_000_000)
    progress.add_file()  # within the interval: not redrawn
    now[0] = 5.0
    progress.add_file()
    assert term.getvalue().count("\r\x1b[Kscrub:") == 3
    assert term.getvalue().endswith(
        "\r\x1b[Kscrub: 2/2 files, 10.0 MB/20.0 MB (50%), 2.5 MB/s, 4s elapsed, ETA 4s")
    progress.clear()
    assert term.getvalue().endswith("\r\x1b[K")


def test_progress_off_a_terminal_is_a_line_every_n_seconds() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = Progress(out, terminal=False, every=30, clock=lambda: now[0])
    for n in (2_000_000_000, 1_000_000_000, 1_000_000_000):
        progress.counted(n)
    progress.counting_done()
    for t, n in ((10, 1), (29, 1), (31, 1)):
        now[0] = t
        progress.add_bytes(n * 500_000_000)
        progress.add_file()
    now[0] = 45
    progress.add_bytes(500_000_000)
    now[0] = 62
    progress.add_bytes(500_000_000)
    progress.clear()  # nothing to erase: lines stay
    assert out.getvalue().splitlines() == [
        "stor scrub: 2/3 files, 1.5 GB/4.0 GB (38%), 48.4 MB/s, 31s elapsed, ETA 51s",
        "stor scrub: 3/3 files, 2.5 GB/4.0 GB (62%), 40.3 MB/s, 1m02s elapsed, ETA 37s",
    ]


def test_progress_without_bytes_counts_files() -> None:
    out = io.StringIO()
    progress = Progress(out, terminal=False, every=30, clock=lambda: 0.0)
    progress.counted(0)
    progress.counted(0)
    progress.counting_done()
    progress.add_file()
    assert progress.figures(10.0) == \
        "1/2 files, 0.0 MB/0.0 MB (50%), 0.0 MB/s, 10s elapsed, ETA 10s"
    assert Progress(out, terminal=False, every=30).figures(0.0).startswith("counting: 0 files")


def test_scrub_off_a_terminal_logs_progress_every_n_seconds(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.store(os.urandom(8 * MiB))
    capsys.readouterr()
    assert host.scrub("--max-mbps", "16", "--progress-every", "0.1", str(host.storages[0])) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) >= 2, captured.err  # 8 MiB at 16 MB/s take 0.5 s
    figures = re.compile(r"stor scrub: \d/1 files, [\d.]+ MB/8\.4 MB \((\d+)%\), [\d.]+ MB/s, "
                         r"\d+s elapsed, ETA (\d+s|\?)")
    percents = []
    for line in lines:
        match = figures.fullmatch(line)
        assert match, line
        percents.append(int(match.group(1)))
    assert percents == sorted(percents) and percents[-1] > 0
    assert "1 files, 8.4 MB checked" in captured.out


@pytest.mark.parametrize("seconds", ["0", "-1", "soon", "inf"])
def test_bad_progress_every_exits_2(host: Host, seconds: str) -> None:
    with pytest.raises(SystemExit) as info:
        host.scrub("--progress-every", seconds)
    assert info.value.code == 2


def test_the_first_pass_counts_what_the_scrub_hashes(host: Host) -> None:
    sizes = [0, 1, 5000, MiB + 7]
    for i, n in enumerate(sizes):
        host.store(os.urandom(n), pair=i % 2)
    misplaced = host.storages[0] / "00" / "00" / "00" / f"{'ab' * 32}.dat"
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(b"not counted")
    (host.storages[1] / "lost+found").mkdir()
    (host.storages[1] / "lost+found" / f"{'cd' * 32}.dat").write_bytes(b"nor this")
    storages = [str(s) for s in host.storages]
    sizes_seen: list[int] = []
    totals = count(storages, on_file=sizes_seen.append)
    assert totals.files == 2 * len(sizes) and totals.bytes == 2 * sum(sizes)
    assert sorted(sizes_seen) == sorted(sizes * 2)
    report = Report(storages)
    Scrubber(twins={s: s for s in storages}, report=report,
             locks=ShaLocks(str(host.root / "locks"))).run(storages)
    assert (report.files, report.bytes) == (totals.files, totals.bytes)


# -- statsite ------------------------------------------------------------------


def received_lines(sock: socket.socket, want: int) -> list[str]:
    lines: list[str] = []
    sock.settimeout(10)
    while len(lines) < want:
        data = sock.recv(65536)
        assert data.endswith(b"\n")
        lines += data.decode().splitlines()
    return lines


def expected_lines(files: int, nbytes: int, found: dict[str, int], repaired: dict[str, int]
                   ) -> set[str]:
    kinds = ("corrupt", "unrecoverable", "missing-twin", "misplaced", "stale-temp", "unreadable",
             "symlink")
    return {f"stor.scrub.files:{files}|c", f"stor.scrub.bytes:{nbytes}|c"} | \
        {f"stor.scrub.{k}.count:{found.get(k, 0)}|c" for k in kinds} | \
        {f"stor.scrub.repaired.{k}.count:{repaired.get(k, 0)}|c" for k in kinds}


def test_run_metrics_go_to_statsite_over_udp(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsite:
        statsite.bind(("127.0.0.1", 0))
        port = statsite.getsockname()[1]
        host.write_config(statsite={"host": f"127.0.0.1:{port}", "prefix": "stor",
                                    "sample_rate": 0.01})
        a, _ = host.store(b"twelve bytes")
        flip(a)
        assert host.scrub("--repair") == 0
        lines = received_lines(statsite, 17)
    timing = [line for line in lines if line.startswith("stor.scrub.seconds:")]
    assert len(timing) == 1 and re.fullmatch(r"stor\.scrub\.seconds:\d+\.\d{3}\|ms", timing[0])
    assert set(lines) - set(timing) == expected_lines(2, 24, {"corrupt": 1}, {"corrupt": 1})
    assert len(lines) == 17  # one each, never sampled (no |@rate) whatever sample_rate says
    assert "cannot send" not in capsys.readouterr().err


def test_run_metrics_go_to_statsite_over_tcp(host: Host) -> None:
    with socket.socket() as statsite:
        statsite.bind(("127.0.0.1", 0))
        statsite.listen(1)
        port = statsite.getsockname()[1]
        host.write_config(statsite={"host": "127.0.0.1", "port": port, "proto": "tcp",
                                    "prefix": "stor"})
        _, b = host.store(b"x")
        b.unlink()
        assert host.scrub() == 1  # the kernel completes the connection; read it afterwards
        conn, _ = statsite.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
    lines = data.decode().splitlines()
    assert {line for line in lines if not line.startswith("stor.scrub.seconds:")} == \
        expected_lines(1, 1, {"missing-twin": 1}, {})


def test_unreachable_statsite_is_one_line_and_changes_nothing(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connections are refused
        host.write_config(statsite={"host": f"127.0.0.1:{port}", "proto": "tcp"})
        host.store(b"fine")
        capsys.readouterr()
        assert host.scrub() == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"stor scrub: cannot send metrics to statsite 127.0.0.1:{port} (tcp)")


# -- the installed console script ---------------------------------------------


@pytest.mark.acceptance('stor-command')
def test_console_script_scrub_and_repair(host: Host) -> None:
    """The acceptance story, as an operator runs it."""
    data = os.urandom(300_000)
    a, b = host.store(data)
    flip(b, 12345)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([STOR, "scrub", "--config", str(host.config), *args],
                              capture_output=True, text=True, timeout=60)

    found = run()
    assert found.returncode == 1, found.stderr
    assert f"corrupt        {b}" in found.stdout
    repaired = run("--repair", "--json")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["repaired"]["corrupt"] == 1
    assert b.read_bytes() == data
    assert run().returncode == 0
    assert run("/not/a/storage").returncode == 2


@pytest.mark.acceptance('stor-command')
def test_console_script_draws_progress_on_a_terminal(host: Host) -> None:
    """stderr on a pseudo-terminal, as an operator at a shell sees it."""
    host.store(os.urandom(6 * MiB))
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([STOR, "scrub", "--config", str(host.config), "--max-mbps", "12",
                                 str(host.storages[0])],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = shown.decode()
    draws = text.split("\r\x1b[K")
    assert any(d.startswith("scrub: counting: ") for d in draws), text
    scrubbing = [d for d in draws if re.fullmatch(
        r"scrub: \d/1 files, [\d.]+ MB/6\.3 MB \(\d+%\), [\d.]+ MB/s, \d+s elapsed, ETA \S+", d)]
    assert len(scrubbing) >= 2, text  # 6 MiB at 12 MB/s: half a second of redraws
    assert text.endswith("\r\x1b[K")  # the line is erased before the summary
    assert b"1 files, 6.3 MB checked" in out
