"""The processes a bench run starts: stor builds, twistd web, nginx, moto.

Every server listens on 127.0.0.1 only, on a port picked by binding port 0,
writes its output to a log file in the run's temp dir (a pipe nobody reads
would stall it), and is stopped by the :class:`Servers` that started it on
every path out of the run, errors and Ctrl-C included.

Only the standard library is imported here, so the bench runs with any stor
build's venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

AUTH_USER = "writer"
AUTH_PASS = "writer_pass"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

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
    size = int(float(number) * _UNITS[(unit or "")[:1].upper()])
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


def busy_note() -> str | None:
    """A warning when other work is running: the ratios will be noisy (checked at start)."""
    load = os.getloadavg()[0]
    if load < 1.0:
        return None
    return (f"the machine is busy before the bench starts (1-minute load average {load:.1f} "
            f"on {os.cpu_count()} cores): expect noisy ratios")


def require_program(name: str, hint: str, extra_dirs: Sequence[str] = ()) -> str:
    """The full path of an external program, or a clear :class:`ToolMissing`.

    ``extra_dirs`` are tried after PATH: ``nginx`` lives in ``/usr/sbin``,
    which a non-root PATH often lacks.
    """
    path = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    if path is None:
        raise ToolMissing(f"`{name}` is not installed; {hint}")
    return path


def stor_relative_path(sha: str) -> Path:
    """The on-disk layout stor reads: ``AA/BB/CC/<SHA>.dat``, upper-cased."""
    upper = sha.upper()
    return Path(upper[0:2], upper[2:4], upper[4:6], upper + ".dat")


class SetAside:
    """Stored copies put away after a measurement: small ones kept until the run's end
    (its work dir goes then), large ones deleted at once.

    On ext4 without a journal (this VM's root filesystem) every new inode --
    each temp file and ``AA/BB/CC`` directory an upload makes, on both sides
    of a row -- is searched for past the free inodes of its group deleted in
    the last 60 to 360 seconds (the kernel's ``recently_deleted``): with the
    thousands of files a small-upload row used to delete each round, one
    ``open(O_CREAT)`` took 0.8 to 2 ms instead of 0.06, a third of stor's CPU,
    and more every round.  That is the cost of the bench's cleanup, not of
    storing (a content store rarely deletes; with a journal the search is not
    made): see docs/benchmarks.rst, "The bench's own deletes".  A large
    row's few files cost no such search, and would fill the disk.  Past
    :attr:`most` bytes kept, the small ones are removed after all.
    """

    SMALL = 1 << 20
    """Copies of at most this many bytes are kept."""

    def __init__(self, most: int = 1 << 30) -> None:
        self.most = most
        self._paths: list[str | Path] = []
        self._bytes = 0

    def put_away(self, paths: Sequence[str | Path], size: int) -> None:
        """Done with ``paths`` (``size`` bytes each): kept when small, else deleted."""
        if size > self.SMALL:
            remove_quietly(paths)
            return
        self._paths.extend(paths)
        self._bytes += size * len(paths)
        if self._bytes > self.most:
            remove_quietly(self._paths)
            self._paths, self._bytes = [], 0


put_away = SetAside().put_away
"""The run's :meth:`SetAside.put_away`."""


def remove_quietly(paths: Sequence[str | Path]) -> None:
    """Delete stored copies between measurements, so the disk does not fill up."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --------------------------------------------------------------------------
# processes


@dataclass
class Server:
    """A server process started by the bench, with its log for diagnostics."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        """Where to send requests (loopback only)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The process id (stor's RSS is read from ``/proc/<pid>``)."""
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server's output, to explain a failure."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def check_alive(self) -> None:
        """Raise with the server's output if it died during a measurement."""
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.proc.returncode}; "
                             f"its output:\n{self.log_tail()}")


def start_process(name: str, argv: Sequence[str], log_path: Path, port: int,
                  env: dict[str, str] | None = None) -> Server:
    """Start a server with stdout+stderr in a file, in its own session.

    Its own session: a Ctrl-C in the terminal reaches the bench only, which
    then stops the server in order instead of leaving it half-killed.
    """
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )
    return Server(name=name, proc=proc, port=port, log_path=log_path)


def stop_process(server: Server) -> None:
    """SIGTERM, then SIGKILL if it lingers: the bench never leaves servers behind."""
    proc = server.proc
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)


def wait_ready(server: Server, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``path`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    url = server.base_url + path
    last_error = "no answer"
    while time.monotonic() < deadline:
        server.check_alive()
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
    raise BenchError(f"{server.name} not ready after {timeout:.0f}s at {url} ({last_error}); "
                     f"its output:\n{server.log_tail()}")


class Servers(contextlib.AbstractContextManager["Servers"]):
    """Every server of one run; all are stopped when the ``with`` block ends."""

    def __init__(self, workdir: Path) -> None:
        """Logs and configs go to ``workdir``."""
        self.workdir = workdir
        self._started: list[Server] = []

    def __exit__(self, *exc_info: object) -> None:
        """Stop in reverse order of start, each one even if another fails to stop."""
        while self._started:
            server = self._started.pop()
            with contextlib.suppress(Exception):
                stop_process(server)

    def start(self, name: str, argv: Sequence[str], port: int, ready_path: str,
              env: dict[str, str] | None = None) -> Server:
        """Start one server and wait until ``ready_path`` answers 200."""
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        server = start_process(name, argv, self.workdir / f"{slug}-{port}.log", port, env)
        self._started.append(server)
        wait_ready(server, ready_path)
        return server

    def stop(self, server: Server) -> None:
        """Stop one server before the end of the run (e.g. after an RSS measurement)."""
        stop_process(server)
        if server in self._started:
            self._started.remove(server)


# --------------------------------------------------------------------------
# stor builds


@dataclass(frozen=True)
class StorBuild:
    """One stor to run: a label and the venv ``bin`` directory holding its ``twistd``.

    The bench must exercise the stor installed in that venv, not whatever
    ``twistd`` happens to be first on PATH.
    """

    label: str
    bin_dir: Path

    def tool(self, name: str) -> Path:
        """A console script of this build's venv, or :class:`ToolMissing`."""
        path = self.bin_dir / name
        if not path.exists():
            raise ToolMissing(f"{path} not found: run `make install` there "
                              f"(or use that venv's python)")
        return path


def current_build(label: str = "stor") -> StorBuild:
    """The stor installed next to the Python running the bench."""
    return StorBuild(label, Path(sys.executable).parent)


def make_storages(root: Path) -> list[tuple[Path, Path]]:
    """Two pairs of storage directories below ``root`` (created if missing)."""
    storages = [root / f"s{i}" for i in range(1, 5)]
    for storage in storages:
        storage.mkdir(parents=True, exist_ok=True)
    return [(storages[0], storages[1]), (storages[2], storages[3])]


def stor_config(pairs: Sequence[tuple[Path, Path]], port: int,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The minimal config every stor build accepts, plus ``extra`` keys.

    Only keys the oldest builds know (``storage_pairs``, ``basic_auth``,
    ``listen``, ``check_mounts``), so the same file starts an old build for
    ``compare.py``; the storages of a bench are never mount points.
    """
    config: dict[str, Any] = {
        "storage_pairs": [[str(a), str(b)] for a, b in pairs],
        "basic_auth": f"{AUTH_USER}:{AUTH_PASS}",
        "check_mounts": False,
        "listen": f"tcp:{port}:interface=127.0.0.1",
    }
    config.update(extra or {})
    return config


def start_stor(servers: Servers, build: StorBuild, pairs: Sequence[tuple[Path, Path]],
               name: str | None = None, extra: dict[str, Any] | None = None,
               workers: int | None = None, env: dict[str, str] | None = None) -> Server:
    """Start ``build`` in the foreground (``twistd -n --pidfile= stor --config F``).

    The endpoint is given in the config's ``listen`` only (old builds may not
    know ``--listen``).  ``workers`` adds ``--workers N``; ``env`` replaces
    the inherited environment.
    """
    port = free_port()
    name = name or build.label
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    config_path = servers.workdir / f"{slug}-{port}.json"
    config_path.write_text(json.dumps(stor_config(pairs, port, extra), indent=2))
    argv = [str(build.tool("twistd")), "-n", "--pidfile=", "stor", "--config", str(config_path)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    server = servers.start(name, argv, port, "/status", env)
    server.info["config"] = config_path
    return server


def start_twistd_web(servers: Servers, build: StorBuild, root: Path) -> Server:
    """``twistd web --path root``: the Twisted framework's static-file ceiling."""
    port = free_port()
    argv = [str(build.tool("twistd")), "-n", "--pidfile=", "web", "--path", str(root),
            "--listen", f"tcp:{port}:interface=127.0.0.1"]
    return servers.start("twistd web", argv, port, "/")


# --------------------------------------------------------------------------
# nginx


NGINX_CONF = """\
# generated by stor bench: one process, no daemon, sendfile, loopback only
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log off;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    fastcgi_temp_path {dir}/nginx-fastcgi;
    uwsgi_temp_path {dir}/nginx-uwsgi;
    scgi_temp_path {dir}/nginx-scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /ready {{ return 200 "ready"; }}
    }}
}}
"""


def start_nginx(servers: Servers, root: Path) -> Server:
    """nginx as a child process: 1 worker, ``sendfile on``, serving ``root``.

    ``master_process off`` keeps it a single process the bench can stop with
    one SIGTERM; ``-e`` and ``-p`` keep it away from ``/var/log/nginx`` and
    ``/etc/nginx``.
    """
    nginx = require_program("nginx", "install it with `apt-get install nginx-light` "
                            "(`make bench` does)", extra_dirs=("/usr/sbin", "/usr/local/sbin"))
    port = free_port()
    conf_dir = servers.workdir / f"nginx-{port}"
    conf_dir.mkdir()
    conf = conf_dir / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=conf_dir, port=port, root=root))
    argv = [nginx, "-p", str(conf_dir), "-e", str(conf_dir / "nginx-error.log"), "-c", str(conf)]
    return servers.start("nginx", argv, port, "/ready")


# --------------------------------------------------------------------------
# moto (S3)


def start_moto(servers: Servers, python: Path) -> Server:
    """moto's S3 server (``python -m moto.server``), the write-through's peer.

    Its signature checks stay off (moto's default): the bench measures stor's
    POST, not moto's auth.  The port comes from ``free_port`` and the server
    must answer ``/moto-api/`` before it counts as started.
    """
    probe = subprocess.run([str(python), "-c", "import moto.server, flask"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        raise ToolMissing(f"moto's server is not installed in {python.parent.parent}: "
                          "`make bench` installs it (the test extra, "
                          "`pip install -e '.[test]'`), or pass --no-s3")
    port = free_port()
    argv = [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return servers.start("moto", argv, port, "/moto-api/")


def create_bucket(moto: Server, bucket: str) -> None:
    """Create ``bucket`` (path style; moto accepts the unsigned request)."""
    request = urllib.request.Request(f"{moto.base_url}/{bucket}", method="PUT", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except (urllib.error.HTTPError, OSError) as exc:
        raise BenchError(f"moto refused to create bucket {bucket}: {exc}") from exc


def s3_object_size(moto: Server, bucket: str, key: str) -> int | None:
    """The object's size as the bucket lists it, or None when the bucket lacks it.

    A listing (``ListObjectsV2`` with the key as prefix) rather than a HEAD:
    moto refuses unsigned requests for a private object, but lists the bucket.
    """
    query = urllib.parse.urlencode({"list-type": "2", "prefix": key})
    try:
        with urllib.request.urlopen(f"{moto.base_url}/{bucket}?{query}", timeout=10) as answer:
            listing = ElementTree.fromstring(answer.read())
    except (urllib.error.HTTPError, OSError, ElementTree.ParseError) as exc:
        raise BenchError(f"listing {key} in bucket {bucket} on moto failed: {exc}") from exc
    for item in listing.iter():
        if item.tag.endswith("Contents"):
            fields = {child.tag.rsplit("}", 1)[-1]: child.text for child in item}
            if fields.get("Key") == key:
                return int(fields.get("Size") or -1)
    return None


def guarded(body: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> int:
    """Run a bench's ``body``: 0 when it ran, 1 when something failed, 2 for a missing tool.

    SIGINT and SIGTERM become KeyboardInterrupt, so every ``with Servers``
    still stops its servers: a shell's background job inherits SIGINT
    ignored, and an unhandled SIGTERM would leave the servers running.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # rounds as they end
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        body(args)
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


def _runtime_parent(workdir: Path) -> Path:
    """Where the run's lock directory goes: ``/dev/shm`` (tmpfs, as ``/run`` is on a
    systemd host) when it is there and writable, else the work directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir


@contextlib.contextmanager
def temp_workdir(parent: Path | None, prefix: str = "stor-bench-") -> Iterator[Path]:
    """A throw-away directory for storages, logs and configs; always removed."""
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    # every stor of the bench keeps its SHA locks here (RUNTIME_DIRECTORY, as systemd's
    # RuntimeDirectory= gives one), never in the host's /run/stor, whatever its state
    before = os.environ.get("RUNTIME_DIRECTORY")
    # on tmpfs when there is one, as systemd's RuntimeDirectory= (under /run) is
    runtime = Path(tempfile.mkdtemp(prefix=prefix + "run-", dir=_runtime_parent(workdir)))
    os.environ["RUNTIME_DIRECTORY"] = str(runtime)
    try:
        yield workdir
    finally:
        if before is None:
            os.environ.pop("RUNTIME_DIRECTORY", None)
        else:
            os.environ["RUNTIME_DIRECTORY"] = before
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
