"""A small thread pool for blocking disk calls, cheap enough for every GET.

Twisted's ``deferToThreadPool`` costs a condition-variable handshake and a
reactor wake-up per call, which halves small-file GET throughput.  Here jobs
go through a C-level ``SimpleQueue`` and finished results are handed back to
the reactor in batches: one ``callFromThread`` wakes it for every result that
is ready, however many requests are in flight.
"""

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from stor.core.reactor import Reactor

T = TypeVar("T")

_STOP = object()

DEFAULT_SIZE = 8
"""Threads of the daemon's disk pool."""


class DiskPool(Service):
    """Runs blocking callables on ``size`` daemon threads; results fire on the reactor.

    Threads start with the service (or on first use) and are joined when it stops.
    """

    def __init__(self, reactor: Reactor, size: int = DEFAULT_SIZE, name: str = "stor-disk") -> None:
        self._reactor = reactor
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: list[tuple[Deferred[Any], bool, Any]] = []
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads: list[threading.Thread] = []

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self.start()

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # twisted's Service is unannotated
        self.stop()

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        while len(self._threads) < self._size:
            t = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Let the workers finish queued jobs and exit; waits for them."""
        for _ in self._threads:
            self._jobs.put(_STOP)
        for t in self._threads:
            t.join()
        self._threads = []

    def call_from_thread(self, f: Callable[..., object], *args: Any) -> None:
        """From a pool thread: call ``f(*args)`` on the reactor thread, soon."""
        self._reactor.callFromThread(f, *args)

    def call_later(self, seconds: float, f: Callable[..., object], *args: Any) -> Any:
        """On the reactor: call ``f(*args)`` in ``seconds`` (an ``IDelayedCall``)."""
        return self._reactor.callLater(seconds, f, *args)

    def run(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        """Call ``f(*args)`` in a worker; the Deferred fires on the reactor thread."""
        if not self._threads:
            self.start()
        d: Deferred[T] = Deferred()
        self._jobs.put((d, f, args))
        return d

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            d, f, args = job
            try:
                outcome = (d, True, f(*args))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._done.append(outcome)
                wake, self._wake_pending = not self._wake_pending, True
            if wake:
                self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, self._done = self._done, []
            self._wake_pending = False
        for d, ok, value in done:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
