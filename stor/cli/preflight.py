"""``stor check-config`` as a dry run of start-up: what the daemon would meet, found first.

What would stop start-up is an error (exit 2: a File log output it cannot
open); what it would start without is a warning (a storage missing or not
writable: the daemon serves degraded, as it must with one dead disk, and
``--strict`` turns it into an error).

Validating the file is not enough: a File log output in a missing directory
stops start-up, and a storage the daemon's user cannot write is a host that
answers every upload with an error.  These checks look at what start-up
touches — the storages, the log files, optionally the peers — as the user the
daemon runs as (``--user``, else the unit's ``User=``, else whoever runs the
check), and create or change nothing: the access checks run in a forked child
that takes that user's ids and asks ``access(2)``.
"""

import os
import pwd
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from stor.config import Config
from stor.config.log import FileOutput
from stor.config.memcached import MemcachedServer, UnixServer
from stor.config.problems import Problems

PROBE_TIMEOUT = 3.0
"""Seconds ``--probe`` waits for each peer."""


@dataclass(frozen=True)
class DaemonUser:
    """The ids the daemon runs with."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def daemon_user(name: str | None) -> DaemonUser:
    """``name`` (a user name or a numeric uid), or the user running the check; KeyError if
    there is no such user."""
    entry = pwd.getpwuid(os.getuid()) if name is None else (
        pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name))
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return DaemonUser(entry.pw_name, entry.pw_uid, entry.pw_gid, tuple(groups))


def check_storages(config: Config, user: DaemonUser, problems: Problems) -> None:
    """Each storage: an absolute path to a directory the daemon's user can list and write."""
    for i, storage in enumerate(config.storages):
        key = f"storage_pairs ({storage})"
        if not os.path.isabs(storage):
            problems.warn(key, "is a relative path: it is resolved from the daemon's working "
                               "directory (WorkingDirectory= under systemd), not from here")
        if not os.path.exists(storage):
            problems.warn(key, "does not exist (stor never creates a storage): it would "
                               "start without it, /status failing")
        elif not os.path.isdir(storage):
            problems.warn(key, "is not a directory: stor would start without it, /status "
                               "failing")
    present = [s for s in config.storages if os.path.isdir(s)]
    for storage, ok in zip(present, can_access(user, present, os.R_OK | os.W_OK | os.X_OK)):
        if not ok:
            problems.warn(f"storage_pairs ({storage})",
                          f"the daemon's user {user.name} cannot read and write it: no file "
                          "could be stored or repaired there")


def check_log_files(config: Config, user: DaemonUser, problems: Problems) -> None:
    """Each File output: the file (or, when it does not exist yet, its directory) writable."""
    for output in config.log.outputs:
        if not isinstance(output, FileOutput):
            continue
        key = f"{output.key}.filename"
        path = output.filename
        target = path if os.path.exists(path) else os.path.dirname(os.path.abspath(path))
        if not os.path.exists(target):
            problems.error(key, f"{path}: its directory {target} does not exist")
            continue
        mode = os.W_OK if target == path else os.W_OK | os.X_OK
        if not can_access(user, [target], mode)[0]:
            what = "the file" if target == path else f"its directory {target}"
            problems.error(key, f"{path}: the daemon's user {user.name} cannot write {what}")


def can_access(user: DaemonUser, paths: Sequence[str], mode: int) -> list[bool]:
    """``access(path, mode)`` for each path, answered with ``user``'s ids (a forked child
    takes them: the checking process keeps its own)."""
    if not paths:
        return []
    if (os.getuid(), os.getgid()) == (user.uid, user.gid):
        return [os.access(p, mode) for p in paths]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the daemon's user, ask, report, exit
        status = 1
        try:
            os.close(read)
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            os.write(write, b"".join(b"1" if os.access(p, mode) else b"0" for p in paths))
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as answers:
        found = answers.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or len(found) != len(paths):
        raise PermissionError(f"cannot take the ids of {user.name} to check access "
                              "(run check-config as root, or as that user)")
    return [found[i:i + 1] == b"1" for i in range(len(paths))]


def probe_peers(config: Config, problems: Problems, timeout: float = PROBE_TIMEOUT) -> None:
    """``--probe``: each configured peer answers (S3, AMQP, memcached)."""
    if config.s3 is not None:
        _probe_http("s3_credentials.host", config.s3.endpoint, problems, timeout)
    if config.amqp is not None:
        parts = urlsplit(config.amqp.url)
        default = 5671 if parts.scheme == "amqps" else 5672
        _probe_tcp("rabbitmq_uri", parts.hostname or "localhost", parts.port or default,
                   problems, timeout)
    for server in config.memcached.servers:
        _probe_memcached(server, problems, timeout)


def _probe_http(key: str, endpoint: str, problems: Problems, timeout: float) -> None:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _probe_tcp(key, parts.hostname or "", port, problems, timeout)


def _probe_tcp(key: str, host: str, port: int, problems: Problems, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        problems.error(key, f"{host}:{port} does not answer ({e.strerror or e})")


def _probe_memcached(server: MemcachedServer, problems: Problems, timeout: float) -> None:
    key = f"memcached_servers ({server.name})"
    try:
        if isinstance(server, UnixServer):
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            sock.connect(server.path)
        else:
            sock = socket.create_connection((server.host, server.port), timeout=timeout)
        with sock:
            sock.sendall(b"version\r\n")
            answer = sock.recv(128)
    except OSError as e:
        problems.error(key, f"does not answer ({e.strerror or e})")
        return
    if not answer.startswith(b"VERSION"):
        problems.error(key, f"answered {answer[:40]!r}, not memcached's VERSION")
