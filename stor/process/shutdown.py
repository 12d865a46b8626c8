"""The listening socket's life: start serving, tell systemd, stop gracefully.

:class:`Frontend` is the top of one serving process's service tree.  It starts
the daemon's services, listens (or adopts a socket a ``--workers`` parent
bound), sends ``READY=1``; on SIGTERM (or SIGINT) it sends ``STOPPING=1``,
stops accepting, lets the requests in flight finish for up to
``shutdown_grace_period`` seconds while closing idle keep-alive connections,
cuts whatever is left, stops the other services, and the process exits 0.

twistd's own SIGTERM handler makes the process re-raise the signal on exit
(status -15); stor replaces it once the reactor runs, so an asked-for stop is
a success.  A second signal cuts the grace period short.
"""

import atexit
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from stor.core.reactor import Reactor
from stor.process.notify import notify
from stor.http.site import StorSite

log = Logger()

DRAIN_TICK = 0.05
"""How often, while stopping, idle connections are closed and the end is checked."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: the old service's tests stopped it with HUP (docs/SPEC.md §8)."""


class GracefulStop:
    """Turns SIGTERM/SIGINT into one graceful ``reactor.stop()`` and exit status 0."""

    def __init__(self, reactor: Reactor) -> None:
        self._reactor = reactor
        self.requested = False
        self.hurry: Callable[[], None] = lambda: None
        """Called on a second signal: stop waiting for requests in flight."""

    def install(self) -> None:
        """Replace the reactor's handlers (call once the reactor runs)."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handler)

    def _handler(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self.signalled, signum)

    def signalled(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            log.warn("{signal} again: cutting the requests still in flight", signal=name)
            self.hurry()
            return
        self.requested = True
        log.info("{signal}: stopping gracefully", signal=name)
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


class Frontend(MultiService):
    """Serves ``site`` on ``listen`` in front of ``inner`` (the daemon's other services).

    ``listen`` is called with the site and returns the listening port (or a
    Deferred of it): an endpoint's ``listen``, or the adoption of an inherited
    socket.  ``notifier`` is :func:`stor.notify.notify` unless a test says otherwise.
    """

    def __init__(
        self,
        listen: Callable[[StorSite], Any],
        site: StorSite,
        inner: Service,
        reactor: Reactor,
        grace: float,
        notifier: Callable[[str], object] = notify,
        signals: GracefulStop | None = None,
    ) -> None:
        super().__init__()
        self._listen = listen
        self.site = site
        self._inner = inner
        inner.setServiceParent(self)
        self._reactor = reactor
        self.grace = grace
        self._notify = notifier
        self.signals = signals if signals is not None else GracefulStop(reactor)
        self.port: Any = None
        self._listening: Deferred[Any] | None = None
        self._hurry = False

    def privilegedStartService(self) -> None:
        """Listen now, before twistd drops privileges; a failure stops start-up."""
        super().privilegedStartService()
        outcome: list[Any] = []
        d = maybeDeferred(self._listen, self.site)
        d.addBoth(outcome.append)
        if outcome and isinstance(outcome[0], Failure):
            sys.stderr.write(f"stor: cannot listen: {outcome[0].getErrorMessage()}\n")
            raise SystemExit(1)
        self._listening = Deferred()
        if outcome:
            self._listened(outcome[0])
        else:  # an endpoint that listens asynchronously
            d.addCallbacks(self._listened, self._listen_failed)

    def _listened(self, port: Any) -> None:
        self.port = port
        if self._listening is not None:
            self._listening.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        log.failure("cannot listen", failure=failure)
        exit_after_stop(self._reactor, 1)

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()
        self.signals.hurry = self._cut_short
        # twistd starts services before the reactor runs and installs its own
        # handlers; ours replace them once it runs, and only then is READY=1 sent,
        # so a stop asked for right after READY is already graceful.
        self._reactor.callWhenRunning(self.signals.install)
        assert self._listening is not None
        self._listening.addCallback(
            lambda port: self._reactor.callWhenRunning(self._ready, port))

    def _ready(self, port: Any) -> None:
        address = describe(port.getHost())
        log.info("serving on {address}", address=address)
        self._notify(f"READY=1\nSTATUS=serving on {address}")

    def stopService(self) -> "Deferred[None]":
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._notify("STOPPING=1")
        try:
            if self.port is not None:
                await maybeDeferred(self.port.stopListening)
            await self.drain()
        except Exception:  # twistd would drop it silently: say so, and stop anyway
            log.failure("graceful stop failed; stopping now")
        await maybeDeferred(super().stopService)

    def _cut_short(self) -> None:
        self._hurry = True

    async def drain(self) -> None:
        """Let requests in flight finish (up to the grace period), then close the rest."""
        site = self.site
        deadline = self._reactor.seconds() + self.grace
        waiting = len(site.in_flight)
        if waiting:
            log.info("waiting up to {grace:g}s for {count} request(s) in flight",
                     grace=self.grace, count=waiting)
        while True:
            still_open = site.close_idle()
            if not site.in_flight and not still_open:
                if waiting:
                    log.info("every request in flight has finished")
                return
            if self._hurry or self._reactor.seconds() >= deadline:
                cut = site.abort_all()
                log.warn("grace period over: cut {count} connection(s), {requests} request(s) "
                         "unfinished", count=cut, requests=len(site.in_flight))
                await deferLater(self._reactor, 0, lambda: None)  # let them see connectionLost
                return
            await deferLater(self._reactor, DRAIN_TICK, lambda: None)


def describe(address: Any) -> str:
    """``127.0.0.1:8080``, ``[::1]:8080`` or a unix socket path."""
    host = getattr(address, "host", None)
    if host is not None:
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    name = getattr(address, "name", None)
    return name.decode() if isinstance(name, bytes) else str(name or address)


def adopt(reactor: Reactor, fd: int) -> Callable[[StorSite], Any]:
    """A ``listen`` for :class:`Frontend` taking over listening socket ``fd`` (a worker's)."""

    def listen(site: StorSite) -> Any:
        probe = socket.socket(fileno=fd)
        family = probe.family
        probe.detach()
        # Twisted declares the factory as ServerFactory[_ProtoWithFactory] and a Site as
        # ServerFactory[HTTPChannel]: its own generic parameters disagree
        port = reactor.adoptStreamPort(fd, family, site)  # type: ignore[arg-type]  # (above); dups the descriptor
        os.close(fd)
        return port

    return listen


_exit_status: list[int] = []


def exit_after_stop(reactor: Reactor, status: int) -> None:
    """Stop the reactor and make the process exit with ``status`` once twistd is done.

    twistd exits 0 after a stop it did not cause by a signal; the status is
    set at interpreter exit, after twistd's own clean-up (pid file, last log).
    """
    if not _exit_status:
        def leave() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(_exit_status[0])

        atexit.register(leave)
    _exit_status[:] = [status]
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass
