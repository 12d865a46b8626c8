"""The config's ``log`` outputs, as twisted.logger observers (see :mod:`stor.config.log`).

One observer, :class:`LogDispatch`, takes every event of this process and
hands it to each output whose ``min_level``/``max_level`` take its level, as
Log::Dispatch did.  twistd's own log (stdout, ``--logfile`` or JSON) is
unchanged; the outputs come in addition to it.

- **Gelf**: :mod:`stor.observe.gelf` messages through a
  :class:`~stor.observe.udp.UdpSender` or a :class:`~stor.observe.stream.StreamSender`.
- **Screen**, **File**: one line per event (the event's text, a traceback on
  the lines after it), written by a :class:`LineWriter` thread.
- **Syslog**: one RFC 3164 datagram per event to ``/dev/log`` (or a UDP host).

Observers run in whatever thread emits an event, so none of them waits for a
disk, a pipe or a peer: lines go to a bounded queue that a thread drains
(dropped and counted when full), datagrams are sent non-blocking.  A failing
output never raises into the code that logged, and an event logged *by* an
output while it handles one (a write error, say) reaches twistd's log only.

SIGUSR1 reopens File outputs (for ``logrotate``; use ``copytruncate`` or a
``postrotate`` that sends it).  twistd's own handler, installed when it logs
to a file, still runs after stor's; a ``--workers`` parent passes the signal
on to its workers, which reopen their own files.
"""

import os
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import replace
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from stor.config.log import (
    LEVELS, FileOutput, GelfOutput, LogConfig, Output, ScreenOutput, SyslogOutput,
)
from stor.config.problems import Problem
from stor.core.errors import ConfigError
from stor.core.reactor import Reactor
from stor.core.reconnect import quiet
from stor.observe.policy import LogPolicy, filtered, outputs_policy
from stor.observe.gelf import datagrams, gelf_message, syslog_level, tcp_frame
from stor.observe.logs import clean_text, event_as_record, safe_traceback
from stor.observe.stream import StreamSender
from stor.observe.udp import UdpSender

log = Logger()

QUEUE_LIMIT = 10_000
"""Lines a File or Screen output keeps waiting for its disk or pipe; more are dropped."""
STOP_TIMEOUT = 5.0
"""Seconds a stopping File output gets to write what is queued."""

LEVEL_NUMBERS = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 3, LogLevel.error: 4,
                 LogLevel.critical: 5}
"""twisted.logger's levels as Log::Dispatch's (debug info notice warning error critical alert emergency)."""


def event_text(event: LogEvent) -> str:
    """The event's text as one would read it: its formatted message, then a failure's traceback."""
    text = clean_text(event)  # input never structure: control characters escaped
    failure = event.get("log_failure")
    if failure is not None:
        traceback = safe_traceback(failure)
        text = f"{text}\n{traceback}" if text else traceback
    return text


class _Text:
    """An event's text, formatted once and only if an output needs it."""

    def __init__(self, event: LogEvent) -> None:
        self._event = event
        self._text: str | None = None

    def __call__(self) -> str:
        if self._text is None:
            self._text = event_text(self._event)
        return self._text


class Sink(Protocol):
    """One configured output: the levels it takes and what it does with an event."""

    @property
    def output(self) -> Output: ...

    dropped: int

    def emit(self, event: LogEvent, level: int, text: Callable[[], str]) -> None: ...


@implementer(ILogObserver)
class LogDispatch:
    """The twisted.logger observer feeding every output (Log::Dispatch's role)."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = tuple(sinks)
        self._local = threading.local()

    def __call__(self, event: LogEvent) -> None:
        if getattr(self._local, "busy", False):
            return  # logged by an output while it handled an event: twistd's log has it
        level = LEVEL_NUMBERS.get(event.get("log_level"), 1)
        text = _Text(event)
        self._local.busy = True
        try:
            for sink in self.sinks:
                if sink.output.accepts(level):
                    try:
                        sink.emit(event, level, text)
                    except Exception:  # an output never breaks the code that logged
                        sink.dropped += 1
        finally:
            self._local.busy = False


# -- Gelf --------------------------------------------------------------------------------------


class GelfSink:
    """GELF messages to Graylog through a UDP or TCP sender (a service started with the outputs)."""

    def __init__(self, output: GelfOutput, reactor: Reactor, source: str | None = None) -> None:
        self.output = output
        self.source = source or socket.gethostname()
        self.dropped = 0
        what = f"GELF output {output.key}"
        self.sender: UdpSender | StreamSender
        if output.protocol == "tcp":
            self.sender = StreamSender(output.host, output.port, reactor, what)
        else:
            self.sender = UdpSender(output.host, output.port, reactor, what)

    def emit(self, event: LogEvent, level: int, text: Callable[[], str]) -> None:
        record = event_as_record(event)
        message = gelf_message(record, float(event.get("log_time") or time.time()), level,
                               self.source, self.output)
        if isinstance(self.sender, StreamSender):
            self.sender.send(tcp_frame(message))
        else:
            self.sender.send_all(datagrams(message, self.output))


# -- lines: Screen and File ----------------------------------------------------------------------


class LineWriter:
    """A thread writing queued lines to a file object, so no observer waits for the disk.

    ``opener(append)`` opens the destination (``append`` False only for a first
    open that should empty the file); :meth:`reopen` asks for a new open
    (after ``logrotate`` moved the file).  The queue holds at most ``limit``
    lines; past that a line is dropped and counted in :attr:`dropped`.
    """

    def __init__(self, name: str, opener: Callable[[bool], IO[bytes]],
                 opened: IO[bytes] | None = None, first_append: bool = True,
                 close_each: bool = False, limit: int = QUEUE_LIMIT) -> None:
        self.name = name
        self._opener = opener
        self._file = opened
        self._next_append = first_append or opened is not None  # reopening never empties
        self._close_each = close_each
        self._limit = limit
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._reopen = False
        self._stopping = False
        self._failing = False
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def put(self, line: bytes) -> None:
        with self._cond:
            if self._stopping or len(self._queue) >= self._limit:
                self.dropped += 1
                return
            self._queue.append(line)
            self._cond.notify()

    def reopen(self) -> None:
        with self._cond:
            self._reopen = True
            self._cond.notify()

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"stor-log-{self.name}",
                                        daemon=True)  # a hung disk never holds the process
        self._thread.start()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Write what is queued and close (blocking: call it in a thread)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._queue or self._reopen or self._stopping):
                    self._cond.wait()
                batch = b"".join(self._queue)
                count = len(self._queue)
                self._queue.clear()
                reopen, self._reopen = self._reopen, False
                stopping = self._stopping
            if batch:  # queued before the reopen: the old file's
                self._write(batch, count)
            if reopen and not stopping:
                self._close()
                self._open()  # now, so the new file is there for logrotate to see
            if stopping:
                self._close()
                return

    def _open(self) -> bool:
        if self._file is None:
            try:
                self._file = self._opener(self._next_append)
                self._next_append = True
            except Exception as e:
                self._failed(e)
                return False
        return True

    def _write(self, data: bytes, count: int) -> None:
        if not self._open():
            self.dropped += count
            return
        assert self._file is not None
        try:
            view = memoryview(data)
            while view:
                written = self._file.write(view)
                view = view[written or 0:]
            self._file.flush()
            self.written += count
            if self._failing:
                self._failing = False
                log.info("log output {name} writes again", name=self.name)
        except Exception as e:
            self.dropped += count
            self._close()
            self._failed(e)
        if self._close_each:
            self._close()

    def _failed(self, error: Exception) -> None:
        if not self._failing:  # once per failure, not once per line
            self._failing = True
            log.error("log output {name} cannot write: {error}; dropping lines until it can",
                      name=self.name, error=error)

    def _close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class _Fd:
    """stdout or stderr as a raw file object: one ``write`` system call per batch."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | memoryview) -> int:
        return os.write(self._fd, data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # never close the process's own stdout/stderr


def stamped(event: LogEvent, level: int, text: str) -> str:
    """``2026-12-07T03:40:00+0000 [1234] warning: <text>``: the time, the pid and the
    Log::Dispatch level name before the message (a File output's ``stamp``)."""
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z",
                         time.localtime(float(event.get("log_time") or time.time())))
    return f"{when} [{os.getpid()}] {LEVELS[min(level, len(LEVELS) - 1)]}: {text}"


def _line(text: str) -> bytes:
    return (text + "\n").encode("utf-8", "replace")


class ScreenSink:
    """Log::Dispatch::Screen: lines on stderr (its default) or stdout."""

    def __init__(self, output: ScreenOutput) -> None:
        self.output = output
        stream: Any = _Fd(2 if output.stderr else 1)
        self.writer = LineWriter(f"{output.key} (Screen)", lambda append: stream, opened=stream)

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    @dropped.setter
    def dropped(self, value: int) -> None:
        self.writer.dropped = value

    def emit(self, event: LogEvent, level: int, text: Callable[[], str]) -> None:
        self.writer.put(_line(text()))


def open_log_file(output: FileOutput, append: bool) -> IO[bytes]:
    """Open (create) ``output``'s file for appending, emptied first unless ``append``; chmod it if asked.

    Always O_APPEND, even when emptied (Log::Dispatch's ``>``): ``--workers``
    processes write to one file, and each line must land at its end.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
    f = open(os.open(output.filename, flags, 0o666), "ab", buffering=0)
    if output.permissions is not None:
        try:
            if os.stat(output.filename).st_mode & 0o7777 != output.permissions:
                os.chmod(output.filename, output.permissions)
        except OSError:
            f.close()
            raise
    return f


class FileSink:
    """Log::Dispatch::File: lines appended to a file, reopened by :meth:`reopen` (SIGUSR1)."""

    def __init__(self, output: FileOutput, opened: IO[bytes] | None = None,
                 first_append: bool | None = None) -> None:
        self.output = output
        self.writer = LineWriter(
            f"{output.key} ({output.filename})",
            lambda append: open_log_file(output, append),
            opened=opened,
            first_append=output.append if first_append is None else first_append,
            close_each=output.close_after_write,
        )

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    @dropped.setter
    def dropped(self, value: int) -> None:
        self.writer.dropped = value

    def emit(self, event: LogEvent, level: int, text: Callable[[], str]) -> None:
        if self.output.stamped:
            self.writer.put(_line(stamped(event, level, text())))
        else:  # Log::Dispatch::File's line: the message alone
            self.writer.put(_line(text()))

    def reopen(self) -> None:
        self.writer.reopen()


# -- Syslog ---------------------------------------------------------------------------------------


class SyslogSink:
    """Log::Dispatch::Syslog: one RFC 3164 datagram per event, never waiting for syslog."""

    def __init__(self, output: SyslogOutput, reactor: Reactor) -> None:
        self.output = output
        self.dropped = 0
        self.sent = 0
        self.sender: UdpSender | None = None
        self._socket: socket.socket | None = None
        self._hostname = ""
        self._failing = False
        if isinstance(output.socket, tuple):
            self._hostname = socket.gethostname().split(".")[0] + " "
            self.sender = UdpSender(output.socket[0], output.socket[1], reactor,
                                    f"syslog output {output.key}")
        else:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)

    def datagram(self, level: int, text: str, when: float) -> bytes:
        """``<PRI>Mmm dd hh:mm:ss [host ]ident[pid]: text`` (the host only over the network)."""
        priority = self.output.facility * 8 + syslog_level(level)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(when))
        if stamp[4] == "0":
            stamp = stamp[:4] + " " + stamp[5:]  # RFC 3164 pads the day with a space
        pid = f"[{os.getpid()}]" if self.output.with_pid else ""
        return f"<{priority}>{stamp} {self._hostname}{self.output.ident}{pid}: {text}".encode(
            "utf-8", "replace")

    def emit(self, event: LogEvent, level: int, text: Callable[[], str]) -> None:
        packet = self.datagram(level, text(), float(event.get("log_time") or time.time()))
        if self.sender is not None:
            self.sender.send(packet)
            return
        assert self._socket is not None and isinstance(self.output.socket, str)
        try:
            self._socket.sendto(packet, self.output.socket)
            self.sent += 1
            self._failing = False
        except OSError as e:
            self.dropped += 1
            if not self._failing:
                self._failing = True
                log.warn("syslog output {key}: cannot send to {path}: {error}",
                         key=self.output.key, path=self.output.socket, error=e)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()


# -- the service ----------------------------------------------------------------------------------


class ReopenOnSignal:
    """SIGUSR1 → ``reopen()`` on the reactor thread, then the handler that was there before.

    ``chain`` False leaves the previous handler out (a ``--workers`` child:
    twistd's handler there would rotate the log file the parent just rotated).
    """

    def __init__(self, reactor: Reactor, reopen: Callable[[], None], chain: bool = True) -> None:
        self._reactor = reactor
        self._reopen = reopen
        self._chain = chain
        self._previous: Any = None
        self.installed = False

    def install(self) -> None:
        self._previous = signal.getsignal(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, self._handler)
        self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(signal.SIGUSR1, self._previous if self._previous is not None
                          else signal.SIG_DFL)
            self.installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        self._reactor.callFromThread(self._reopen)
        if self._chain and callable(self._previous):
            self._previous(signum, frame)


class LogOutputs(MultiService):
    """Installs :class:`LogDispatch` for this process while running, and owns the outputs' parts.

    The observer is added in ``privilegedStartService`` (before anything
    else of stor starts, so start-up messages reach the outputs) and removed
    when this service stops; put this service first in the tree so it stops
    last.  ``warnings`` (the config's) are logged once the outputs can take
    them.  ``on_reopen`` callables run on SIGUSR1 after the files are reopened.
    """

    def __init__(self, sinks: Sequence[Sink], reactor: Reactor,
                 warnings: Iterable[Problem] = (), chain_signal: bool = True,
                 on_reopen: Sequence[Callable[[], object]] = (),
                 policy: LogPolicy | None = None) -> None:
        super().__init__()
        self.sinks = tuple(sinks)
        self.dispatch = LogDispatch(self.sinks)
        # no line per reconnection attempt, no factory noise, no health-check access events
        self._observer = quiet(filtered(self.dispatch, policy or outputs_policy()))
        self._reactor = reactor
        self._warnings = tuple(warnings)
        self._on_reopen = tuple(on_reopen)
        self.signal = ReopenOnSignal(reactor, self.reopen, chain_signal)
        for sink in self.sinks:
            sender = getattr(sink, "sender", None)
            if isinstance(sender, Service):
                sender.setServiceParent(self)

    def privilegedStartService(self) -> None:
        if self.sinks:
            globalLogPublisher.addObserver(self._observer)
        for sink in self.sinks:
            writer = getattr(sink, "writer", None)
            if isinstance(writer, LineWriter):
                writer.start()
        for problem in self._warnings:
            log.warn("config: {problem}", problem=str(problem), key=problem.key)
        super().privilegedStartService()

    def startService(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.signal.install()
        super().startService()

    def reopen(self) -> None:
        """Reopen every File output (SIGUSR1), then pass the news on."""
        files: list[FileSink] = [s for s in self.sinks if isinstance(s, FileSink)]
        for sink in files:
            sink.reopen()
        log.info("SIGUSR1: reopening {count} log files", count=len(files))
        for callback in self._on_reopen:
            callback()

    def stopService(self) -> "Deferred[object]":
        d: Deferred[object] = Deferred.fromCoroutine(self._stop())
        return d

    async def _stop(self) -> None:
        await super().stopService()
        self.signal.uninstall()
        globalLogPublisher.removeObserver(self._observer)
        waits = []
        for sink in self.sinks:
            writer = getattr(sink, "writer", None)
            if isinstance(writer, LineWriter):
                waits.append(deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                               writer.stop))
            if isinstance(sink, SyslogSink):
                sink.close()
        await DeferredList(waits)


def build_log_outputs(config: LogConfig, reactor: Reactor, *, warnings: Iterable[Problem] = (),
                      child: bool = False,
                      on_reopen: Sequence[Callable[[], object]] = ()) -> LogOutputs:
    """The outputs ``config`` names for this process; raises ConfigError if a File cannot be opened.

    Files are opened here, before the reactor runs, so a path stor cannot
    write stops start-up with one line naming the key.  A ``--workers`` child
    (``child``) appends: only its parent empties a file opened in ``>`` mode,
    and only the parent logs the config's warnings.
    """
    sinks: list[Sink] = []
    for output in config.outputs:
        if isinstance(output, GelfOutput):
            sinks.append(GelfSink(output, reactor))
        elif isinstance(output, ScreenOutput):
            sinks.append(ScreenSink(output))
        elif isinstance(output, FileOutput):
            sinks.append(_file_sink(output, child))
        elif isinstance(output, SyslogOutput):
            sinks.append(SyslogSink(output, reactor))
    return LogOutputs(sinks, reactor, warnings=() if child else warnings,
                      chain_signal=not child, on_reopen=on_reopen,
                      policy=outputs_policy(config.access_skip))


def _file_sink(output: FileOutput, child: bool) -> FileSink:
    absolute = replace(output, filename=os.path.abspath(output.filename))
    append = output.append or child
    if output.lazy_open or output.close_after_write:
        return FileSink(absolute, first_append=append)
    try:
        opened = open_log_file(absolute, append)
    except OSError as e:
        raise ConfigError(f"{output.key}.filename",
                          f"cannot open {output.filename} for writing: {e.strerror}") from e
    return FileSink(absolute, opened=opened)
