"""Benchmark stor against the ceilings it is meant to approach, in one run.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python bench/run.py [--post-size 256MiB] [--duration 10]
                                  [--connections 16] [--workers N]

Three figures, each next to a ceiling measured on the same machine in the same
run, so the ratios stay meaningful whatever the hardware:

(a) GET of warm 4 KiB files, req/s with ``wrk``: stor vs ``twistd web`` serving
    the same files (the Twisted framework ceiling).
(b) POST of one big file, MB/s (10^6 bytes/s): stor vs an in-process loop that
    hashes the bytes once and writes them to two fsync'ed files.
(c) stor's peak RSS while it receives (b).

Only the standard library is used; the servers run from the interpreter's own
venv (``<dir of sys.executable>/twistd``).  Exit status: 0 when every
measurement ran (a missed target is reported as ``MISS``, not an error), 1 when
something failed to run, 2 when a required tool is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

AUTH_USER = "writer"
AUTH_PASS = "writer_pass"
GET_FILE_SIZE = 4096
GET_FILE_COUNT = 1000
CHUNK = 1 << 20
WARMUP_SECONDS = 2
READY_TIMEOUT = 30.0
RSS_INTERVAL = 0.02

GET_TARGET = 0.80
POST_TARGET = 0.70
RSS_TARGET_MB = 150

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class BenchError(Exception):
    """Something needed for a measurement failed; the message says what."""


class ToolMissing(BenchError):
    """A required external program is not installed (exit status 2)."""


# --------------------------------------------------------------------------
# small helpers


def parse_size(text: str) -> int:
    """Parse ``256MiB``, ``1GiB``, ``64M``, ``4096`` into bytes (binary units).

    K/M/G are always powers of 1024 here, with or without the ``i``, because
    the sizes are file sizes; throughput is reported in decimal MB separately.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (try 256MiB, 1GiB, 4096)")
    number, unit = match.groups()
    factor = _UNITS[(unit or "")[:1].upper()]
    size = int(float(number) * factor)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return size


def human_size(size: int) -> str:
    """Format a byte count the way the user typed it (``256 MiB``)."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def free_port() -> int:
    """A loopback TCP port that is free right now (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_tool(name: str) -> Path:
    """A console script from the running interpreter's venv.

    The bench must exercise the stor installed next to the Python running it,
    not whatever ``twistd`` happens to be first on PATH.
    """
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise ToolMissing(f"{path} not found: run `make install` and use .venv/bin/python")
    return path


def require_program(name: str, hint: str) -> str:
    """The full path of an external program, or a clear :class:`ToolMissing`."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(f"`{name}` is not on PATH; {hint}")
    return path


def stor_relative_path(sha: str) -> Path:
    """The on-disk layout stor reads: ``AA/BB/CC/<SHA>.dat``, upper-cased."""
    upper = sha.upper()
    return Path(upper[0:2], upper[2:4], upper[4:6], upper + ".dat")


def kib_to_mb(kib: int) -> float:
    """/proc reports KiB ("kB"); the report uses decimal MB like the throughput."""
    return kib * 1024 / 1e6


def sha256_file(path: Path) -> str:
    """Hash a file in 1 MiB chunks, so big files never sit in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------
# servers


@dataclass
class Server:
    """A server process started by the bench, with its log for diagnostics."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        """Where to send requests (loopback only)."""
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output, to explain a failure."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def start_process(name: str, argv: Sequence[str], log_path: Path, port: int) -> Server:
    """Start a server with stdout+stderr in a file, so a chatty log never blocks it."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name=name, proc=proc, port=port, log_path=log_path)


def stop_process(server: Server) -> None:
    """Terminate, then kill if it lingers: the bench must never leave servers behind."""
    proc = server.proc
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_ready(server: Server, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``path`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    url = server.base_url + path
    last_error = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with status {server.proc.returncode} before "
                f"it was ready; its output:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last_error = f"HTTP {exc.code}"
        except OSError as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise BenchError(
        f"{server.name} not ready after {timeout:.0f}s at {url} ({last_error}); "
        f"its output:\n{server.log_tail()}"
    )


@contextlib.contextmanager
def running(server: Server, ready_path: str) -> Iterator[Server]:
    """Wait for ``server`` to be ready, and always stop it afterwards."""
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        stop_process(server)


def storage_pairs(workdir: Path) -> list[tuple[Path, Path]]:
    """The two pairs of storage dirs every stor instance of this run shares.

    Shared so the GET files placed once are found by each instance, and so
    uploads land on the same filesystem as the POST ceiling's copies.
    """
    storages = [workdir / "storage" / f"s{i}" for i in range(1, 5)]
    for storage in storages:
        storage.mkdir(parents=True, exist_ok=True)
    return [(storages[0], storages[1]), (storages[2], storages[3])]


def write_stor_config(workdir: Path, port: int) -> Path:
    """Write a minimal stor config: two pairs, basic auth, no mount checks."""
    config = {
        "storage_pairs": [[str(a), str(b)] for a, b in storage_pairs(workdir)],
        "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
        "check_mounts": False,
        "listen": f"tcp:{port}:interface=127.0.0.1",
    }
    path = workdir / f"stor-{port}.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def start_stor(workdir: Path, workers: int | None = None) -> Server:
    """Start stor in the foreground on a free loopback port."""
    port = free_port()
    config = write_stor_config(workdir, port)
    argv = [
        str(venv_tool("twistd")), "-n", "--pidfile=", "stor",
        "--config", str(config), "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]
    name = "stor"
    if workers is not None:
        argv += ["--workers", str(workers)]
        name = f"stor --workers {workers}"
    return start_process(name, argv, workdir / f"stor-{port}.log", port)


def start_twistd_web(workdir: Path, root: Path) -> Server:
    """Start ``twistd web`` serving ``root``: the framework's static-file ceiling."""
    port = free_port()
    argv = [
        str(venv_tool("twistd")), "-n", "--pidfile=", "web",
        "--path", str(root), "--listen", f"tcp:{port}:interface=127.0.0.1",
    ]
    return start_process("twistd web", argv, workdir / f"web-{port}.log", port)


# --------------------------------------------------------------------------
# (a) GET


def make_get_files(workdir: Path, count: int = GET_FILE_COUNT) -> tuple[list[str], Path]:
    """Create ``count`` random 4 KiB files in stor's layout and in a flat web root.

    Each file goes on both members of one pair, as stor would have stored it,
    alternating pairs so lookups exercise both.  The same bytes go into
    ``webroot/<sha>.dat`` for twistd web.  Returns the shas and the web root.
    """
    pairs = storage_pairs(workdir)
    webroot = workdir / "webroot"
    webroot.mkdir(parents=True, exist_ok=True)
    shas = []
    for index in range(count):
        data = os.urandom(GET_FILE_SIZE)
        sha = hashlib.sha256(data).hexdigest()
        for storage in pairs[index % len(pairs)]:
            target = storage / stor_relative_path(sha)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (webroot / f"{sha}.dat").write_bytes(data)
        shas.append(sha)
    return shas, webroot


def write_wrk_script(path: Path, urls: Sequence[str]) -> Path:
    """Generate a wrk Lua script that walks ``urls`` round-robin.

    Each wrk thread starts at a different offset so the threads do not hit the
    same file at the same moment, and ``done`` prints one machine-readable line
    so the bench does not depend on wrk's human output format.
    """
    listing = ",\n".join(f'  "{url}"' for url in urls)
    path.write_text(
        "-- generated by stor bench/run.py\n"
        f"local paths = {{\n{listing}\n}}\n"
        "local n = #paths\n"
        "local threads = 0\n"
        "function setup(thread)\n"
        "  thread:set('start', (threads * 97) % n)\n"
        "  threads = threads + 1\n"
        "end\n"
        "function init(args)\n"
        "  i = start or 0\n"
        "end\n"
        "function request()\n"
        "  i = (i % n) + 1\n"
        "  return wrk.format('GET', paths[i])\n"
        "end\n"
        "function done(summary, latency, requests)\n"
        "  local e = summary.errors\n"
        "  io.write(string.format('BENCH requests=%d duration_us=%d connect=%d read=%d "
        "write=%d status=%d timeout=%d p50_us=%d p99_us=%d\\n',\n"
        "    summary.requests, summary.duration, e.connect, e.read, e.write, e.status,\n"
        "    e.timeout, latency:percentile(50), latency:percentile(99)))\n"
        "end\n"
    )
    return path


@dataclass
class WrkResult:
    """What one wrk run measured."""

    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        """Requests per second over the whole run."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_note(self) -> str:
        """Empty when clean; otherwise which errors wrk counted."""
        bad = {key: value for key, value in self.errors.items() if value}
        return ", ".join(f"{key} errors {value:,}" for key, value in bad.items())


def run_wrk(
    wrk: str, base_url: str, script: Path, seconds: int, connections: int, threads: int
) -> WrkResult:
    """Run wrk once and parse the line our Lua ``done`` hook printed."""
    argv = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
        "--timeout", "10s", "-s", str(script), base_url + "/",
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish: {' '.join(argv)}") from exc
    match = re.search(r"^BENCH (.*)$", result.stdout, re.MULTILINE)
    if result.returncode != 0 or not match:
        raise BenchError(
            f"wrk failed (status {result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    fields = dict(item.split("=") for item in match.group(1).split())
    values = {key: int(value) for key, value in fields.items()}
    return WrkResult(
        requests=values["requests"],
        seconds=values["duration_us"] / 1e6,
        errors={key: values[key] for key in ("connect", "read", "write", "status", "timeout")},
        p50_ms=values["p50_us"] / 1000,
        p99_ms=values["p99_us"] / 1000,
    )


def check_get(base_url: str, path: str, expected: bytes, label: str) -> None:
    """Fetch one file and compare bytes: a fast wrong answer is not a result."""
    try:
        with urllib.request.urlopen(base_url + path, timeout=10) as response:
            body = response.read()
    except (urllib.error.HTTPError, OSError) as exc:
        raise BenchError(f"{label}: GET {path} failed: {exc}") from exc
    if body != expected:
        raise BenchError(
            f"{label}: GET {path} returned {len(body)} bytes that differ from the file"
        )


def bench_get(
    server: Server, urls: Sequence[str], sample: bytes, args: argparse.Namespace,
    wrk: str, script_dir: Path,
) -> WrkResult:
    """Check one file, warm up (discarded), then measure GET req/s."""
    check_get(server.base_url, urls[0], sample, server.name)
    script = write_wrk_script(script_dir / f"get-{server.port}.lua", urls)
    threads = min(args.wrk_threads, args.connections)
    run_wrk(wrk, server.base_url, script, WARMUP_SECONDS, args.connections, threads)
    return run_wrk(wrk, server.base_url, script, args.duration, args.connections, threads)


# --------------------------------------------------------------------------
# (b) POST and (c) RSS


def make_source_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes in 1 MiB chunks, hashing as we go."""
    digest = hashlib.sha256()
    remaining = size
    with path.open("wb") as handle:
        while remaining:
            chunk = os.urandom(min(CHUNK, remaining))
            digest.update(chunk)
            handle.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def post_ceiling(source: Path, target_dir: Path, expected_sha: str) -> float:
    """Seconds for what stor must at least do: hash once, write twice, fsync both.

    Same filesystem as stor's storages, same 1 MiB reads; the copies are
    removed afterwards so they do not crowd the disk for stor's turn.
    """
    target_dir.mkdir(parents=True, exist_ok=True)
    copies = [target_dir / "copy-a.dat", target_dir / "copy-b.dat"]
    os.sync()
    started = time.monotonic()
    digest = hashlib.sha256()
    with source.open("rb") as src, copies[0].open("wb") as out_a, copies[1].open("wb") as out_b:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            out_a.write(chunk)
            out_b.write(chunk)
        for out in (out_a, out_b):
            out.flush()
            os.fsync(out.fileno())
    elapsed = time.monotonic() - started
    if digest.hexdigest() != expected_sha:
        raise BenchError("ceiling: sha256 of the source changed while reading it")
    for copy in copies:
        copy.unlink()
    return elapsed


def read_status_kb(pid: int, field_name: str) -> int | None:
    """One ``/proc/<pid>/status`` field in kB, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler(threading.Thread):
    """Sample a process's VmRSS every ~20 ms until stopped; keep the maximum.

    VmHWM (the kernel's own peak) is read separately at the end; the sampled
    peak shows the bench saw the growth while the upload was in flight.
    """

    def __init__(self, pid: int, interval: float = RSS_INTERVAL) -> None:
        """Prepare to sample ``pid``; :meth:`start` begins."""
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        """Poll until :meth:`stop`; a vanished process just ends the sampling."""
        while not self._stop_event.is_set():
            rss = read_status_kb(self.pid, "VmRSS")
            if rss is None:
                return
            self.peak_kb = max(self.peak_kb, rss)
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class PostResult:
    """What the stor upload measured."""

    seconds: float
    status: int
    body: str
    rss_before_kb: int
    rss_peak_kb: int
    hwm_kb: int
    notes: list[str]


def curl_upload(
    curl: str, url: str, source: Path, body_path: Path, timeout: float
) -> tuple[int, float]:
    """Stream ``source`` to ``url`` with curl; return (HTTP status, seconds).

    ``-T`` streams the file (``--data-binary @file`` would load it whole into
    the client), ``-X POST`` overrides -T's PUT, and an empty ``Expect:``
    avoids the 100-continue round trip.
    """
    argv = [
        curl, "-sS", "-o", str(body_path), "-w", "%{http_code}", "-X", "POST",
        "-T", str(source), "-H", "Expect:",
        "-H", "Content-Type: application/octet-stream",
        "-u", f"{AUTH_USER}:{AUTH_PASS}", url,
    ]
    started = time.monotonic()
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"curl upload did not finish within {timeout:.0f}s") from exc
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(f"curl failed (status {result.returncode}): {result.stderr.strip()}")
    return int(result.stdout.strip() or 0), elapsed


def verify_stored(body: str, size: int, sha: str) -> list[str]:
    """Check stor's 201 answer names two paths holding the right bytes.

    Returns notes about anything wrong; the timing stands either way, but a
    fast store that stores the wrong thing must be visible in the report.
    """
    try:
        paths = json.loads(body)
    except ValueError:
        return [f"stor's POST answer is not JSON: {body[:200]!r}"]
    if not (isinstance(paths, list) and len(paths) == 2 and all(isinstance(p, str) for p in paths)):
        return [f"stor's POST answer is not a JSON array of two paths: {body[:200]!r}"]
    notes = []
    for stored in map(Path, paths):
        if not stored.is_absolute():
            notes.append(f"stor answered a relative path {stored}; not verified")
        elif not stored.exists():
            notes.append(f"stor answered {stored} but it does not exist")
        elif stored.stat().st_size != size:
            notes.append(f"{stored} has {stored.stat().st_size} bytes, expected {size}")
        elif sha256_file(stored) != sha:
            notes.append(f"{stored} does not hash to {sha}")
    if len(set(paths)) != 2:
        notes.append(f"stor's two paths are the same: {paths}")
    return notes


def bench_post(server: Server, source: Path, size: int, sha: str, workdir: Path) -> PostResult:
    """Upload the big file to stor while sampling its RSS; verify what it stored."""
    curl = require_program("curl", "install it with `apt-get install curl`")
    pid = server.proc.pid
    rss_before = read_status_kb(pid, "VmRSS") or 0
    body_path = workdir / "post-answer.json"
    timeout = 300 + size / 5e6
    os.sync()
    sampler = RssSampler(pid)
    sampler.start()
    try:
        status, seconds = curl_upload(curl, f"{server.base_url}/{sha}", source, body_path, timeout)
    finally:
        sampler.stop()
    hwm = read_status_kb(pid, "VmHWM") or 0
    body = body_path.read_text(errors="replace") if body_path.exists() else ""
    if status != 201:
        raise BenchError(
            f"stor answered HTTP {status} to the upload (expected 201): {body[:300]!r}\n"
            f"its output:\n{server.log_tail()}"
        )
    notes = verify_stored(body, size, sha)
    if sampler.samples < 3 and seconds >= 0.5:
        notes.append(f"only {sampler.samples} RSS samples during the upload")
    peak = max(sampler.peak_kb, rss_before)
    return PostResult(seconds, status, body, rss_before, peak, hwm, notes)


# --------------------------------------------------------------------------
# report


def mark(ok: bool) -> str:
    """The verdict column: targets are goals, so a miss is flagged, not fatal."""
    return "ok" if ok else "MISS"


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows with each column padded to its widest cell."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    for row in rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        print("  ".join(cells).rstrip())


def get_row(label: str, stor: WrkResult, ceiling: WrkResult) -> list[str]:
    """One GET line: both req/s, the ratio and the verdict."""
    ratio = stor.rps / ceiling.rps if ceiling.rps else 0.0
    return [
        label, f"stor {stor.rps:,.0f} req/s", f"twistd web {ceiling.rps:,.0f} req/s",
        f"ratio {ratio:.2f} (target >= {GET_TARGET:.2f})", mark(ratio >= GET_TARGET),
    ]


def wrk_details(label: str, result: WrkResult) -> str:
    """Latency and error details for one wrk run, for the lines under the table."""
    line = f"  {label}: p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
    if result.error_note:
        line += f", WARNING {result.error_note}"
    return line


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options; defaults match the issue's targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--post-size", type=parse_size, default=parse_size("256MiB"),
                        help="size of the uploaded file, e.g. 64MiB, 1GiB (default 256MiB)")
    parser.add_argument("--duration", type=int, default=10,
                        help="seconds of each measured wrk run (default 10)")
    parser.add_argument("--connections", type=int, default=16,
                        help="wrk connections (default 16)")
    parser.add_argument("--wrk-threads", type=int, default=1,
                        help="wrk threads (default 1: leaves the other core to the server)")
    parser.add_argument("--workers", type=int, default=None,
                        help="also bench GET against stor started with --workers N")
    parser.add_argument("--tmpdir", type=Path, default=None,
                        help="where the throw-away storage goes (default: system temp dir); "
                             "its filesystem is what the POST figures measure")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.wrk_threads < 1:
        parser.error("--duration, --connections and --wrk-threads must be >= 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def bench_workers(
    args: argparse.Namespace, workdir: Path, urls: Sequence[str], sample: bytes,
    wrk: str, ceiling: WrkResult,
) -> list[str] | str:
    """GET against stor with ``--workers N``: a table row, or a note if stor refused."""
    server = start_stor(workdir, workers=args.workers)
    try:
        try:
            wait_ready(server, "/status")
        except BenchError:
            tail = server.log_tail(5).strip().splitlines()
            return (f"note: stor did not start with --workers {args.workers} "
                    f"(not supported yet?): {tail[-1] if tail else 'no output'}")
        result = bench_get(server, urls, sample, args, wrk, workdir)
    finally:
        stop_process(server)
    return get_row(f"GET 4 KiB, {args.workers} workers", result, ceiling)


def run(args: argparse.Namespace) -> None:
    """Run every measurement and print the report; raises on failure."""
    wrk = require_program("wrk", "install it with `apt-get install wrk` (`make bench` does)")
    venv_tool("twistd")
    workdir = Path(tempfile.mkdtemp(prefix="stor-bench-", dir=args.tmpdir))
    try:
        print(f"stor bench ({os.cpu_count()} cores, python {platform.python_version()}, "
              f"temp dir {workdir})", flush=True)
        shas, webroot = make_get_files(workdir)
        sample = (webroot / f"{shas[0]}.dat").read_bytes()
        stor_urls = [f"/{sha}" for sha in shas]
        web_urls = [f"/{sha}.dat" for sha in shas]

        print(f"GET: {len(shas)} files of 4 KiB, wrk {args.connections} connections, "
              f"{args.duration}s after a {WARMUP_SECONDS}s warm-up ...", flush=True)
        with running(start_twistd_web(workdir, webroot), "/") as web:
            ceiling = bench_get(web, web_urls, sample, args, wrk, workdir)

        print(f"POST: generating {human_size(args.post_size)} of random data ...", flush=True)
        source = workdir / "upload.bin"
        sha = make_source_file(source, args.post_size)
        ceiling_seconds = post_ceiling(source, workdir / "storage" / "ceiling", sha)

        with running(start_stor(workdir), "/status") as stor:
            stor_get = bench_get(stor, stor_urls, sample, args, wrk, workdir)
            print("POST: uploading to stor ...", flush=True)
            post = bench_post(stor, source, args.post_size, sha, workdir)
        source.unlink()

        extra: list[str] | str | None = None
        if args.workers is not None:
            extra = bench_workers(args, workdir, stor_urls, sample, wrk, ceiling)

        report(args, ceiling, stor_get, extra, ceiling_seconds, post)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(
    args: argparse.Namespace, ceiling: WrkResult, stor_get: WrkResult,
    extra: list[str] | str | None, ceiling_seconds: float, post: PostResult,
) -> None:
    """Print the table, the details and the notes."""
    size = args.post_size
    stor_mbps = size / post.seconds / 1e6
    ceil_mbps = size / ceiling_seconds / 1e6
    post_ratio = stor_mbps / ceil_mbps
    peak_mb = kib_to_mb(max(post.rss_peak_kb, post.hwm_kb))
    rows = [get_row("GET 4 KiB", stor_get, ceiling)]
    if isinstance(extra, list):
        rows.append(extra)
    rows.append([
        f"POST {human_size(size)}", f"stor {stor_mbps:,.0f} MB/s",
        f"ceiling {ceil_mbps:,.0f} MB/s",
        f"ratio {post_ratio:.2f} (target >= {POST_TARGET:.2f})", mark(post_ratio >= POST_TARGET),
    ])
    print()
    print_table(rows)
    rss_ok = peak_mb < RSS_TARGET_MB
    print(f"peak RSS during POST: {peak_mb:,.0f} MB (target < {RSS_TARGET_MB} MB at 1 GiB)"
          f"  {mark(rss_ok)}")
    if isinstance(extra, str):
        print(extra)
    print()
    print("details (MB = 10^6 bytes):")
    print(wrk_details("GET twistd web", ceiling))
    print(wrk_details("GET stor", stor_get))
    print(f"  POST stor: {post.seconds:.2f} s, HTTP {post.status}; ceiling (sha256 once, "
          f"write twice, fsync both): {ceiling_seconds:.2f} s")
    print(f"  stor RSS: {kib_to_mb(post.rss_before_kb):,.0f} MB before the upload, "
          f"{kib_to_mb(post.rss_peak_kb):,.0f} MB sampled peak, "
          f"VmHWM {kib_to_mb(post.hwm_kb):,.0f} MB (the kernel's peak since start)")
    for note in post.notes:
        print(f"WARNING: {note}")


def interrupt_on_signals() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt so the cleanup still runs.

    Set explicitly: a shell's background job inherits SIGINT ignored, and
    SIGTERM would otherwise kill the bench with its servers left running.
    """
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 when the measurements ran, 1 on failure, 2 for a missing tool."""
    args = parse_args(argv)
    interrupt_on_signals()
    try:
        run(args)
    except ToolMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
