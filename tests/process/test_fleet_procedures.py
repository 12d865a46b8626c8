"""Acceptance (issue 20, item 3): every procedure of docs/fleet-operations.rst,
run command by command as the page gives it, on three (or two) stor hosts
behind the shipped conf/haproxy-fleet.cfg and one bucket on Ceph RGW, with the
outcome the page promises asserted.

:class:`Procedure` reads a procedure's commands (``$ …`` lines) and what they
print from the page; the test names each command as it runs it, and the
helper checks it is the page's next one (and, at the end, that none was left
out), puts the test's hosts, paths and socket in place of the page's, runs it
with bash (``systemctl`` is done by the test: a SIGTERM and a start, or
HAProxy's check and SIGUSR2) and checks its output holds the page's lines.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from support.fleet import Fleet, Host, s3_keys, s3_relay, wait_in_bucket
from support.harness import AUTH_HEADER, request, wait_for
from support.helpers import sha256
from support.ports import free_port, refused_port
from test_fleet import host_of

pytestmark = pytest.mark.acceptance('fault', 'haproxy', 'moto', 'process', 'stor-process')

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "fleet-operations.rst"
BIN = str(Path(sys.executable).parent)  # the venv's `stor`


@dataclass
class Step:
    command: str
    prints: list[str] = field(default_factory=list)


def doc_steps(title: str) -> list[Step]:
    """The ``$`` commands of the procedure ``title`` (a ``~~~`` section of the page),
    each with the lines the page says it prints."""
    text = DOC.read_text()
    m = re.search(rf"^{re.escape(title)}\n~+\n(.*?)(?=^[^\n]+\n[~-]+\n)", text, re.S | re.M)
    assert m, f"no procedure {title!r} in {DOC.name}"
    steps: list[Step] = []
    for line in m.group(1).splitlines():
        if line.startswith("    $ "):
            steps.append(Step(line[6:]))
        elif line.startswith("    ") and line.strip() and steps and not line.startswith("    $"):
            steps[-1].prints.append(line.strip())
        elif not line.strip() or not line.startswith("    "):
            if steps and line.strip():
                steps.append(Step(""))  # prose between blocks ends a command's output
    return [s for s in steps if s.command]


class Procedure:
    """One procedure of the page, run by a test in the page's order."""

    def __init__(self, title: str, lb: Any, names: dict[str, Host],
                 on: Host | None = None, old: Host | None = None,
                 servers: dict[str, str] | None = None) -> None:
        """``names``: the page's host names -> the test's hosts (whose names are their
        HAProxy servers' unless ``servers`` says otherwise); ``on``: the host a command
        runs on (its config and storages); ``old``: a dead host's disks."""
        self.title, self.lb, self.names, self.on, self.old = title, lb, names, on, old
        self.servers = {n: h.name for n, h in names.items()} | (servers or {})
        self.steps = doc_steps(title)
        self.done = 0

    def subst(self, command: str) -> str:
        """The page's names, paths and socket made the test's."""
        def host(m: re.Match[str]) -> str:
            h = self.names[m.group(1)]
            return f"127.0.0.1:{h.port}"
        command = re.sub(r"\b(stor\d):8080", host, command)
        command = re.sub(r"\b(stor\d)\b", lambda m: self.servers[m.group(1)], command)
        command = command.replace("/run/haproxy/admin.sock", str(self.lb.socket_path))
        command = command.replace("/etc/haproxy/haproxy.cfg", str(self.lb.config_path))
        if self.on is not None:
            command = command.replace("/etc/stor/stor.json", str(self.on.config_path))
            command = re.sub(r"/srv/stor/data(\d)",
                             lambda m: self.on.storages[int(m.group(1)) - 1], command)
        if self.old is not None:
            command = re.sub(r"/mnt/old/data(\d)",
                             lambda m: self.old.storages[int(m.group(1)) - 1], command)
        return command

    def run(self, command: str, action: Callable[[], Any] | None = None,
            until: float = 0.0) -> subprocess.CompletedProcess[str] | None:
        """Run the page's next command, which must be ``command``; ``action`` does a
        ``systemctl`` one.  With ``until``, repeat it (for that many seconds at most)
        until it prints what the page says."""
        assert self.done < len(self.steps), f"{self.title}: the page has no more commands"
        step = self.steps[self.done]
        assert step.command == command, f"{self.title}: the page's next command is " \
            f"{step.command!r}, the test ran {command!r}"
        self.done += 1
        if command.startswith("systemctl "):
            assert action is not None, f"the test must do {command!r}"
            action()
            return None
        assert action is None
        env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}:/usr/sbin"}
        deadline = time.monotonic() + until
        while True:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", self.subst(command)],
                                  capture_output=True, text=True, env=env, timeout=120)
            out = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
            if done.returncode == 0 and all(p in out for p in step.prints):
                return done
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.title}: {self.subst(command)!r} exited "
                                     f"{done.returncode}, printed {out}, not {step.prints}")
            time.sleep(0.5)

    def finished(self) -> None:
        assert self.done == len(self.steps), \
            f"{self.title}: not run: {[s.command for s in self.steps[self.done:]]}"


def upload(port: int, data: bytes) -> tuple[int, Any]:
    answer = request(port, "POST", f"/{sha256(data)}", data, {"Authorization": AUTH_HEADER},
                     timeout=70)
    return answer.status, json.loads(answer.body) if answer.status in (200, 201) else answer.body


def reads_back(port: int, files: list[bytes]) -> None:
    for data in files:
        answer = request(port, "GET", f"/{sha256(data)}", timeout=30)
        assert (answer.status, answer.body == data) == (200, True), (sha256(data), answer.status)


def in_pools(lb: Any, expected: dict[str, str]) -> None:
    wait_for(lambda: all(lb.servers(pool).get(n, "-").startswith(s) for pool in
                         ("stor", "stor_write") for n, s in expected.items()),
             f"{expected} in both pools", timeout=30)


def restart_host(fleet: Fleet, host: Host) -> None:
    """``systemctl restart stor``: SIGTERM (a graceful stop), then a start."""
    assert fleet.stop(host) == 0
    fleet.restart(host)


def restart_procedure(fleet: Fleet, lb: Any, host: Host, names: dict[str, Host]) -> None:
    """docs/fleet-operations.rst, "Restarting a host (maintenance)", on ``host``."""
    doc = Procedure("Restarting a host (maintenance)", lb, {**names, "stor2": host}, on=host)
    doc.run('echo "set server stor/stor2 state maint; set server stor_write/stor2 state maint"'
            ' | socat stdio /run/haproxy/admin.sock')
    doc.run("stor info --storage http://stor2:8080 | grep outbox", until=60)
    doc.run("systemctl restart stor", lambda: restart_host(fleet, host))
    doc.run("curl -fsS http://stor2:8080/health/ready")
    doc.run("curl -fsS http://stor2:8080/health/write")
    doc.run('echo "set server stor/stor2 state ready; set server stor_write/stor2 state ready"'
            ' | socat stdio /run/haproxy/admin.sock')
    doc.finished()


def set_peers(host: Host, peers: list[Host]) -> None:
    raw = json.loads(host.config_path.read_text())
    raw["fleet_peers"] = [f"http://127.0.0.1:{p.port}" for p in peers]
    host.config_path.write_text(json.dumps(raw))


def start_fleet(fleet: Fleet, names: list[str], keys: dict[str, Any],
                ports: dict[str, int] | None = None) -> list[Host]:
    ports = ports or {n: free_port() for n in names}
    return [fleet.start(n, port=ports[n], **keys, fleet_peers=[
        f"http://127.0.0.1:{p}" for m, p in ports.items() if m != n]) for n in names]


def keys_for(rgw: Any, bucket: str, **more: Any) -> dict[str, Any]:
    return s3_keys(rgw, bucket, s3_write_through=True, s3_enabled=True, s3_read="fallback",
                   **more)


class SteadyLoad(threading.Thread):
    """Uploads (1 KiB - 1 MiB) each followed by a verified read, through the balancer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.outcomes: list[tuple[str, int, bool]] = []
        self.files: list[bytes] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            data = os.urandom(1024 + (i * 7919) % (1024 * 1024))
            status, _ = upload(self.port, data)
            self.outcomes.append(("put", status, True))
            if status == 201:
                self.files.append(data)
                answer = request(self.port, "GET", f"/{sha256(data)}", timeout=30)
                self.outcomes.append(("get", answer.status, answer.body == data))


def test_restarting_a_host_under_load_fails_no_request(fleet: Fleet, haproxy: Any,
                                                        rgw: Any) -> None:
    bucket = rgw.new_bucket()
    hosts = start_fleet(fleet, ["stor1", "stor2", "stor3"], keys_for(rgw, bucket))
    names = {h.name: h for h in hosts}
    lb = haproxy([h.port for h in hosts])
    in_pools(lb, {n: "UP" for n in names})
    load = SteadyLoad(lb.port)
    load.start()
    try:
        wait_for(lambda: len(load.files) >= 10, "uploads through the balancer")
        restart_procedure(fleet, lb, names["stor2"], names)
        in_pools(lb, {n: "UP" for n in names})
        done = len(load.files)
        wait_for(lambda: len(load.files) >= done + 10, "uploads after the restart")
    finally:
        load.stop.set()
        load.join(60)
    assert {(kind, status, exact) for kind, status, exact in load.outcomes} == {
        ("put", 201, True), ("get", 200, True)}, [o for o in load.outcomes if o[1] >= 300]
    assert names["stor2"].runs == 2
    reads_back(lb.port, load.files)


def test_adding_a_host(fleet: Fleet, haproxy: Any, rgw: Any) -> None:
    bucket = rgw.new_bucket()
    keys = keys_for(rgw, bucket)
    ports = {n: free_port() for n in ["stor1", "stor2", "stor3"]}
    old = start_fleet(fleet, ["stor1", "stor2"], keys, {n: ports[n] for n in ["stor1", "stor2"]})
    lb = haproxy([h.port for h in old])
    in_pools(lb, {"stor1": "UP", "stor2": "UP"})
    before = [os.urandom(20_000 + i) for i in range(30)]
    for data in before:
        assert upload(lb.port, data)[0] == 201

    new = fleet.start("stor3", port=ports["stor3"], run=False, **keys,
                      fleet_peers=[h.url for h in old])
    names = {h.name: h for h in [*old, new]}
    doc = Procedure("Adding a host", lb, names, on=new)
    doc.run("systemctl start stor", lambda: fleet.run(new))
    doc.run("curl -fsS http://stor3:8080/health/ready")
    doc.run("curl -fsS http://stor3:8080/health/write")
    reads_back(lb.port, before)
    lb.config_path.write_text(lb.render([h.port for h in names.values()], list(names)))
    doc.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    doc.run("systemctl reload haproxy", lb.reload)
    doc.finished()
    in_pools(lb, {n: "UP" for n in names})
    reads_back(lb.port, before)
    for host in old:  # the new host in the others' fleet_peers, one restart at a time
        set_peers(host, [h for h in names.values() if h is not host])
        restart_procedure(fleet, lb, host, names)
        in_pools(lb, {n: "UP" for n in names})
        reads_back(lb.port, before)
    after = [os.urandom(30_000 + i) for i in range(30)]
    took = [host_of(list(names.values()), upload(lb.port, data)[1]).name for data in after]
    assert took.count("stor3") >= 3, f"the new host took {took.count('stor3')} of 30 uploads"
    reads_back(lb.port, before + after)


def test_draining_and_retiring_a_host(fleet: Fleet, haproxy: Any, rgw: Any) -> None:
    bucket = rgw.new_bucket()
    hosts = start_fleet(fleet, ["stor1", "stor2", "stor3"], keys_for(rgw, bucket))
    names = {h.name: h for h in hosts}
    lb = haproxy([h.port for h in hosts])
    in_pools(lb, {n: "UP" for n in names})
    files = [os.urandom(30_000 + i) for i in range(30)]
    taken = [data for data in files if host_of(hosts, upload(lb.port, data)[1]).name == "stor1"]
    assert taken, "stor1 took none of the uploads"
    gone = names["stor1"]

    doc = Procedure("Draining and retiring a host", lb, names, on=gone)
    doc.run('echo "set server stor_write/stor1 state maint" | socat stdio '
            '/run/haproxy/admin.sock')
    assert lb.servers("stor")["stor1"].startswith("UP")  # reads go on
    more = [os.urandom(40_000 + i) for i in range(20)]
    assert all(host_of(hosts, upload(lb.port, data)[1]) is not gone for data in more)
    doc.run("stor info --storage http://stor1:8080 | grep outbox", until=60)
    doc.run("stor s3-sync --dry-run --config /etc/stor/stor.json")
    rest = [h for h in hosts if h is not gone]
    lb.config_path.write_text(lb.render([h.port for h in rest], [h.name for h in rest]))
    doc.run("haproxy -c -f /etc/haproxy/haproxy.cfg")
    doc.run("systemctl reload haproxy", lb.reload)
    for host in rest:
        set_peers(host, [h for h in rest if h is not host])
        restart_procedure(fleet, lb, host, names)
    doc.run("systemctl stop stor", lambda: fleet.stop(gone))
    doc.finished()
    reads_back(lb.port, files + more)
    for data in taken:
        assert wait_in_bucket(rgw, bucket, sha256(data)) == sha256(data)


def test_replacing_a_dead_host(fleet: Fleet, haproxy: Any, rgw: Any) -> None:
    bucket = rgw.new_bucket()
    keys = keys_for(rgw, bucket, s3_timeout=1, s3_connect_timeout=1)
    ports = {n: free_port() for n in ["stor1", "stor2", "stor3"]}
    hosts = start_fleet(fleet, list(ports), keys, ports)
    dead = hosts[1]
    assert fleet.stop(dead) == 0  # its outbox will never reach the bucket
    dead.config_path.write_text(json.dumps({**json.loads(dead.config_path.read_text()),
                                            "s3_credentials": {**keys["s3_credentials"],
                                            "host": f"127.0.0.1:{refused_port()}"}}))
    fleet.restart(dead)
    lb = haproxy([h.port for h in hosts])
    in_pools(lb, {h.name: "UP" for h in hosts})
    files = [os.urandom(25_000 + i) for i in range(30)]
    holders = [host_of(hosts, upload(lb.port, data)[1]) for data in files]
    only_dead = [d for d, h in zip(files, holders) if h is dead]
    elsewhere = [d for d, h in zip(files, holders) if h is not dead]
    assert only_dead and elsewhere
    for data in elsewhere:
        wait_in_bucket(rgw, bucket, sha256(data))

    os.kill(dead.pid, 9)  # it dies
    in_pools(lb, {"stor2": "DOWN"})
    new = fleet.start("stor2-new", port=dead.port, run=False, **keys,
                      fleet_peers=[hosts[0].url, hosts[2].url])
    doc = Procedure("Replacing a dead host", lb, {"stor1": hosts[0], "stor2": new,
                                                  "stor3": hosts[2]}, on=new, old=dead,
                    servers={"stor2": "stor2"})
    doc.run('echo "set server stor/stor2 state maint; set server stor_write/stor2 state maint"'
            ' | socat stdio /run/haproxy/admin.sock')
    reads_back(lb.port, elsewhere)
    for data in only_dead:  # out of reach until its disks come back
        assert request(lb.port, "GET", f"/{sha256(data)}", timeout=30).status == 404
    for i in range(1, 5):
        doc.run(f"cp -a /mnt/old/data{i}/. /srv/stor/data{i}/")
    doc.run("systemctl start stor", lambda: fleet.run(new))
    doc.run("stor s3-sync --config /etc/stor/stor.json")
    doc.run("curl -fsS http://stor2:8080/health/ready")
    doc.run("curl -fsS http://stor2:8080/health/write")
    doc.run('echo "set server stor/stor2 state ready; set server stor_write/stor2 state ready"'
            ' | socat stdio /run/haproxy/admin.sock')
    doc.finished()
    in_pools(lb, {"stor2": "UP"})
    reads_back(lb.port, files)
    for data in files:
        assert wait_in_bucket(rgw, bucket, sha256(data), timeout=5) == sha256(data)


@pytest_twisted.ensureDeferred
async def test_after_an_s3_outage(fleet: Fleet, haproxy: Any, rgw: Any) -> None:
    bucket = await threads.deferToThread(rgw.new_bucket)
    relay = await s3_relay(rgw)
    try:
        keys = keys_for(rgw, bucket)
        keys["s3_credentials"]["host"] = relay.endpoint
        hosts = await threads.deferToThread(start_fleet, fleet, ["stor1", "stor2"], keys)
        lb = haproxy([h.port for h in hosts])
        await threads.deferToThread(in_pools, lb, {"stor1": "UP", "stor2": "UP"})
        await relay.cut()  # S3 refuses connections
        files = [os.urandom(10_000 + i) for i in range(30)]
        took = set()
        for data in files:
            status, body = await threads.deferToThread(upload, lb.port, data)
            assert status == 201  # uploads answered all along
            took.add(host_of(hosts, body).name)
        assert took == {"stor1", "stor2"}
        await relay.restore()  # S3 is back

        def procedure(host: Host) -> None:
            doc = Procedure("After an S3 outage", lb, {"stor1": host}, on=host)
            doc.run("stor info --storage http://stor1:8080 | grep outbox", until=60)
            doc.run("stor s3-sync --dry-run --config /etc/stor/stor.json")
            doc.finished()

        for host in hosts:
            await threads.deferToThread(procedure, host)
        for data in files:
            sha = sha256(data)
            found = await threads.deferToThread(wait_in_bucket, rgw, bucket, sha, 5)
            assert found == hashlib.sha256(data).hexdigest()
    finally:
        await relay.cut()
