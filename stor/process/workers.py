"""``--workers N``: N serving processes sharing one listening socket.

The parent binds the socket (so a broken address fails start-up before any
child runs) and never accepts on it; each child is ``twistd -n stor`` with
``--adopt-fd 3`` and takes connections from the same socket, so the kernel
spreads them over the workers.  The parent:

- starts the workers and sends systemd ``READY=1`` once every one of them has
  said ``READY=1`` on a private notify socket the parent hands them as
  ``$NOTIFY_SOCKET``;
- restarts a worker that dies (after 0.5 s, doubling up to 10 s while workers
  keep dying within 10 s of their start; it gives up, exit status 1, after
  :data:`GIVE_UP` such deaths in a row);
- on SIGTERM sends ``STOPPING=1``, closes its copy of the socket and passes
  SIGTERM on; each worker stops gracefully (see :mod:`stor.shutdown`); the
  parent waits for all of them (SIGKILL after the grace period plus
  :data:`KILL_MARGIN` s) and exits 0.

Each worker answers with ``Stor-Worker: <pid>``.  Their Prometheus counters
are shared through files in a directory the parent makes (prometheus-client's
multiprocess mode), so any worker's ``/metrics`` shows the whole, and the
``process_*`` figures of every process labelled by worker and pid (see
:mod:`stor.process.worker_metrics`).  Every log line carries the pid of the
process that wrote it (:mod:`stor.observe.logs`).
"""

import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IProcessTransport, IReadDescriptor
from twisted.internet.protocol import Factory, Protocol, ProcessProtocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stor.core.reactor import Reactor
from stor.process.notify import notify, parse_state
from stor.observe.prometheus import MULTIPROC_ENV
from stor.process.worker_metrics import PARENT_ENV, SLOT_ENV
from stor.process.shutdown import GracefulStop, describe, exit_after_stop

log = Logger()

CHILD_FD = 3
QUICK_DEATH = 10.0
"""A worker dying this many seconds after its start or sooner counts as a crash loop."""
FIRST_DELAY = 0.5
MAX_DELAY = 10.0
GIVE_UP = 10
KILL_MARGIN = 10.0
PR_SET_PDEATHSIG = 1


class _NeverServed(Factory):
    """The parent's factory for the socket it binds but never accepts on."""

    noisy = False  # no "Starting factory <…object at 0x…>" lines

    def logPrefix(self) -> str:
        """What the port's "… starting on <port>" line calls it."""
        return "stor --workers"

    def buildProtocol(self, addr: object) -> Protocol | None:
        return None


class _Worker(ProcessProtocol):
    transport: IProcessTransport  # set by spawnProcess before connectionMade

    def __init__(self, supervisor: "Supervisor", slot: int, started: float) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.started = started
        self.pid: int | None = None
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def processEnded(self, reason: Failure) -> None:
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


@implementer(IReadDescriptor)
class _ChildNotices:
    """The parent's private notify socket, read on the reactor.

    A plain reader rather than ``listenUNIXDatagram``, whose port logs its
    protocol's class and the socket's abstract name when it starts and stops.
    """

    def __init__(self, name: str, on_ready: Callable[[], None], reactor: Reactor) -> None:
        self._on_ready = on_ready
        self._reactor = reactor
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK
                                     | socket.SOCK_CLOEXEC)
        self._socket.bind(name)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._socket.fileno()

    def doRead(self) -> None:
        while True:
            try:
                data = self._socket.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # never seen on an AF_UNIX datagram socket; keep serving
                log.warn("workers' notify socket: {error}", error=e)
                return
            if parse_state(data).get("READY") == "1":
                self._on_ready()

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def logPrefix(self) -> str:
        return "stor --workers"

    def close(self) -> None:
        if self._socket.fileno() >= 0:
            self._reactor.removeReader(self)
            self._socket.close()


class Supervisor(Service):
    """Binds the socket, runs ``count`` workers over it, restarts them, stops them."""

    def __init__(
        self,
        endpoint: Any,
        count: int,
        worker_argv: Callable[[int], Sequence[str]],
        reactor: Reactor,
        grace: float,
        notifier: Callable[[str], object] = notify,
        executable: str = sys.executable,
    ) -> None:
        self._endpoint = endpoint
        self.count = count
        self._argv = worker_argv
        self._reactor = reactor
        self.grace = grace
        self._notify = notifier
        self._executable = executable
        self.signals = GracefulStop(reactor)
        self.workers: dict[int, _Worker] = {}
        self.port: Any = None
        self._notice_name = ""
        self._notices: _ChildNotices | None = None
        self._metrics_dir: str | None = None
        self._ready_needed = count
        self._stopping = False
        self._quick_deaths = 0

    # -- start ---------------------------------------------------------------

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        outcome: list[Any] = []
        self._endpoint.listen(_NeverServed()).addBoth(outcome.append)
        if not outcome or isinstance(outcome[0], Failure) or not hasattr(outcome[0], "fileno"):
            why = outcome[0].getErrorMessage() if outcome and isinstance(outcome[0], Failure) \
                else "--workers needs a tcp: or unix: listen endpoint"
            sys.stderr.write(f"stor: cannot listen: {why}\n")
            raise SystemExit(1)
        self.port = outcome[0]
        self.port.stopReading()  # the workers accept; the parent only holds the socket

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        self.signals.hurry = self._pass_signal_on
        self._reactor.callWhenRunning(self.signals.install)
        self._notice_name = f"\0stor-workers-{os.getpid()}-{secrets.token_hex(6)}"
        self._notices = _ChildNotices(self._notice_name, self.worker_ready, self._reactor)
        self._metrics_dir = tempfile.mkdtemp(prefix="stor-metrics-",
                                             dir=os.environ.get("RUNTIME_DIRECTORY") or None)
        log.info("{count} workers sharing {address}", count=self.count,
                 address=describe(self.port.getHost()))
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = "@" + self._notice_name[1:]
        env[MULTIPROC_ENV] = self._metrics_dir or ""
        env[SLOT_ENV] = str(slot)
        env[PARENT_ENV] = str(os.getpid())
        worker = _Worker(self, slot, self._reactor.seconds())
        argv = [self._executable, "-c", "from twisted.scripts.twistd import run; run()",
                *self._argv(CHILD_FD)]
        self._reactor.spawnProcess(worker, self._executable, argv, env=env,
                                   childFDs={0: 0, 1: 1, 2: 2, CHILD_FD: self.port.fileno()})
        self.workers[slot] = worker
        log.info("worker {slot} started, pid {pid}", slot=slot, pid=worker.pid)

    def worker_ready(self) -> None:
        if self._ready_needed > 0:
            self._ready_needed -= 1
            if self._ready_needed == 0:
                log.info("all {count} workers serving", count=self.count)
                self._notify(f"READY=1\nSTATUS={self.count} workers serving on "
                             f"{describe(self.port.getHost())}")

    # -- a worker ends ---------------------------------------------------------

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.slot) is worker:
            del self.workers[worker.slot]
        if worker.pid is not None and self._metrics_dir:
            self._forget_metrics(worker.pid)
        if self._stopping:
            return
        status = _status(reason)
        lived = self._reactor.seconds() - worker.started
        self._quick_deaths = self._quick_deaths + 1 if lived < QUICK_DEATH else 1
        if self._quick_deaths > GIVE_UP:
            log.error("worker {slot} (pid {pid}) {status}; workers keep dying, giving up",
                      slot=worker.slot, pid=worker.pid, status=status)
            exit_after_stop(self._reactor, 1)
            return
        delay = min(FIRST_DELAY * 2 ** (self._quick_deaths - 1), MAX_DELAY)
        log.warn("worker {slot} (pid {pid}) {status}; restarting it in {delay:g}s",
                 slot=worker.slot, pid=worker.pid, status=status, delay=delay)
        self._reactor.callLater(delay, self._spawn, worker.slot)

    def _forget_metrics(self, pid: int) -> None:
        from twisted.internet.threads import deferToThreadPool
        from prometheus_client import multiprocess

        d = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                              multiprocess.mark_process_dead, pid, self._metrics_dir)
        d.addErrback(lambda f: log.debug("metrics files of {pid}: {e}", pid=pid,
                                         e=f.getErrorMessage()))

    # -- stop ------------------------------------------------------------------

    def stopService(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        super().stopService()
        self._stopping = True
        self._notify("STOPPING=1")
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        waiting = [w.ended for w in self.workers.values()]
        self._pass_signal_on()
        deadline = self._reactor.callLater(self.grace + KILL_MARGIN, self._kill_all)
        for ended in waiting:
            await ended
        if deadline.active():
            deadline.cancel()
        if self._notices is not None:
            self._notices.close()
        if self._metrics_dir:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        log.info("all workers have stopped")
        await deferLater(self._reactor, 0, lambda: None)

    def signal_workers(self, signum: int) -> None:
        """Send ``signum`` to every worker (SIGUSR1: reopen your log files)."""
        for worker in list(self.workers.values()):
            self._signal(worker, signum)

    def _pass_signal_on(self) -> None:
        for worker in list(self.workers.values()):
            self._signal(worker, signal.SIGTERM)

    def _kill_all(self) -> None:
        for worker in list(self.workers.values()):
            log.warn("worker {slot} (pid {pid}) still running: killing it",
                     slot=worker.slot, pid=worker.pid)
            self._signal(worker, signal.SIGKILL)

    @staticmethod
    def _signal(worker: _Worker, signum: int) -> None:
        try:
            worker.transport.signalProcess(signum)
        except Exception:  # already gone
            pass


def stop_with_parent() -> None:
    """In a worker: be sent SIGTERM if the parent dies (even by SIGKILL), never orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: systemd's KillMode still cleans up
        log.debug("cannot ask to be stopped with the parent")
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit() and os.getppid() != int(parent):  # it died before we asked
        raise SystemExit("stor: the --workers parent is gone; not starting")


def _status(reason: Failure) -> str:
    if reason.check(ProcessDone):
        return "exited with status 0"
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        return f"was killed by {signal.Signals(sig).name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"
