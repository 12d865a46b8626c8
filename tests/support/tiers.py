"""Two tiers: the fast tier (``make test-fast``) and the acceptance tier.

A test belongs to the acceptance tier when it starts a process, talks to a
peer or injects a real fault; it says so, naming what it needs::

    @pytest.mark.acceptance("memcached", "stor-process")

Every other test is fast: it runs in this process, on loopback sockets of its
own at most, and waits on no real time worth speaking of.

The plugin watches what each test really uses (the programs it starts, the
peer fixtures it asks for, the broker it connects to) and fails

- an acceptance test that uses none of what it declares (it belongs in the
  fast tier, or its declaration is wrong), or that uses something it does not
  declare;
- a test of the fast tier that uses any of them.

So the tiers cannot drift: a test that starts to need a process moves to the
acceptance tier by a failure, not by somebody remembering.

``STOR_TIERS_RECORD=<file>`` switches the checks off and writes what each test
used instead (JSON, test id → needs): how the markers were first written.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# What an acceptance test may declare, and what each means.
NEEDS = {
    "stor-process": "a stor process (twistd stor, stor serve, stor check-config, ...)",
    "stor-command": "the stor command line as a process (stor put/get/verify, scrub, s3-sync)",
    "process": "any other child process (curl, strace, systemd-analyze, a python child, ...)",
    "memcached": "a memcached peer",
    "moto": "an S3 server: moto's, or Ceph's RADOS Gateway (support/rgw.py) beside it",
    "rabbitmq": "the RabbitMQ broker on 127.0.0.1:5672",
    "nginx": "nginx in front of stor",
    "haproxy": "HAProxy in front of stor",
    "fault": "a real fault injected into the machine (a tmpfs or a read-only mount)",
    "fault-fs": "disk faults through the FUSE layer the suite builds and mounts (support/faultfs.py)",
}

# Fixtures that are, or start, a peer.
PEER_FIXTURES = {
    "moto": "moto",
    "bucket": "moto",
    "memcached": "memcached",
    "memcached_peers": "memcached",
    "stor_process": "stor-process",
    "fleet": "stor-process",
    "nginx": "nginx",
    "haproxy": "haproxy",
    "readonly_dir": "fault",
    "tiny_disk": "fault",
    "faultfs": "fault-fs",
}

RGW_PROGRAMS = frozenset({"ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph",
                          "ceph-authtool", "monmaptool", "ceph-conf"})
"""What starting Ceph's RADOS Gateway runs (support/rgw.py): the S3 need, as moto."""

FAULTFS_PROGRAMS = frozenset({"faultfs", "fusermount3", "gcc", "pkg-config"})
"""What the FUSE fault layer runs: its build, its daemon, its unmount (support/faultfs.py)."""

BROKER_PORT = 5672
RECORD_ENV = "STOR_TIERS_RECORD"
MAX_FAST_SLEEP = 1.0

_used: set[str] | None = None  # what the running test has used so far (None between tests)
_recorded: dict[str, list[str]] = {}


def uses(need: str) -> None:
    """Note that the running test uses ``need`` (peer helpers call this)."""
    assert need in NEEDS, f"unknown need {need!r}"
    if _used is not None:
        _used.add(need)


def _program_need(argv: Any) -> str:
    """What starting ``argv`` amounts to."""
    if isinstance(argv, (str, bytes)):
        argv = shlex.split(os.fsdecode(argv))
    words = [os.path.basename(os.fsdecode(a)) for a in list(argv)[:4]]
    name = words[0] if words else ""
    if name == "twistd" or (name == "stor" and words[1:2] in (["serve"], ["check-config"])):
        return "stor-process"
    if name == "stor":
        return "stor-command"
    if "moto.server" in words or name in RGW_PROGRAMS:
        return "moto"  # an S3 server, mocked or real
    if name in ("memcached", "nginx", "haproxy"):
        return name
    if name in ("mount", "umount"):
        return "fault"
    if name in FAULTFS_PROGRAMS:
        return "fault-fs"
    return "process"


# -- watching: every child process, every connection to the broker ---------------

_real_popen_init = subprocess.Popen.__init__
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sleep = time.sleep


def _popen_init(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
    uses(_program_need(args))
    _real_popen_init(self, args, *a, **kw)


def _note_address(address: Any) -> None:
    if isinstance(address, tuple) and len(address) >= 2 and address[1] == BROKER_PORT:
        uses("rabbitmq")


def _connect(self: socket.socket, address: Any) -> None:
    _note_address(address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _note_address(address)
    return _real_connect_ex(self, address)


def _spawn_process(real: Any) -> Any:
    def spawn(protocol: Any, executable: Any, args: Any = (), *a: Any, **kw: Any) -> Any:
        uses(_program_need(args or [executable]))
        return real(protocol, executable, args, *a, **kw)
    return spawn


_fast_test_running = False


def _refuse_long_wait(seconds: float, how: str) -> None:
    """A fast test may not wait on real time for longer than :data:`MAX_FAST_SLEEP`."""
    if _fast_test_running and seconds > MAX_FAST_SLEEP:
        raise AssertionError(
            f"a fast test waits {seconds} s of real time ({how}): wait on an event or "
            "drive a task.Clock instead (or it belongs in the acceptance tier)")


def _sleep(seconds: float) -> None:
    _refuse_long_wait(seconds, "time.sleep")
    _real_sleep(seconds)


def _defer_later(real: Any) -> Any:
    def defer_later(clock: Any, delay: float, *a: Any, **kw: Any) -> Any:
        from twisted.internet import reactor

        if clock is reactor:
            _refuse_long_wait(delay, "task.deferLater on the reactor")
        return real(clock, delay, *a, **kw)
    return defer_later


def _install() -> None:
    from twisted.internet import reactor, task

    subprocess.Popen.__init__ = _popen_init  # type: ignore[method-assign]  # the watch itself
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    reactor.spawnProcess = _spawn_process(reactor.spawnProcess)  # type: ignore[attr-defined]
    time.sleep = _sleep
    task.deferLater = _defer_later(task.deferLater)


# -- the hooks ------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "acceptance(*needs): the test starts a process, talks to a peer or injects a real "
        f"fault; needs are among: {', '.join(sorted(NEEDS))} (support/tiers.py)")
    _install()


def _declared(item: pytest.Item) -> set[str] | None:
    """The needs ``item`` declares (None: a fast test); unknown names fail collection."""
    marks = list(item.iter_markers("acceptance"))
    if not marks:
        return None
    declared = {need for mark in marks for need in mark.args}
    unknown = declared - NEEDS.keys()
    if unknown or not declared:
        raise pytest.UsageError(
            f"{item.nodeid}: acceptance needs must be among {sorted(NEEDS)}; got {sorted(declared)}")
    return declared


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        _declared(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    global _used, _fast_test_running
    _used = set()
    _fast_test_running = _declared(item) is None and not os.environ.get(RECORD_ENV)
    for name in getattr(item, "fixturenames", ()):
        if name in PEER_FIXTURES:
            uses(PEER_FIXTURES[name])
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    if call.when != "call" or _used is None:
        return
    report = outcome.get_result()
    if os.environ.get(RECORD_ENV):
        _recorded[item.nodeid] = sorted(_used)
        return
    problem = _problem(_declared(item), _used)
    if problem and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: {problem}"


def _problem(declared: set[str] | None, used: set[str]) -> str | None:
    if declared is None:
        if used:
            return (f"a fast test uses {sorted(used)}: mark it "
                    f"@pytest.mark.acceptance({', '.join(repr(n) for n in sorted(used))})")
        return None
    if not used & declared:
        return (f"an acceptance test that used none of what it declares {sorted(declared)}: "
                "it belongs in the fast tier, or its declaration is wrong")
    if used - declared:
        return f"uses {sorted(used - declared)} without declaring it (declares {sorted(declared)})"
    return None


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    global _used, _fast_test_running
    _used = None
    _fast_test_running = False


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get(RECORD_ENV)
    if path and _recorded:
        old: dict[str, list[str]] = {}
        if Path(path).exists():
            old = json.loads(Path(path).read_text())
        old.update(_recorded)
        Path(path).write_text(json.dumps(old, indent=1, sort_keys=True))
