"""Log output: ``--log-format text|json``.

Everything stor logs goes through :mod:`twisted.logger`.  ``text`` is twistd's
own format (one line per event, tracebacks as indented lines) with the pid of
the process after the time, so the lines of ``--workers`` processes sharing
one stdout (one journal stream) can be told apart::

    2025-01-01T12:00:00+0000 [1234] [stor.access#info] GET /… 200 …

``json`` is one JSON object per line, for log shippers::

    {"time": "2025-01-01T12:00:00.123456+00:00", "level": "info",
     "namespace": "stor.access", "pid": 1234, "message": "GET /… 200 …",
     "method": "GET", "path": "/…", "sha": "…", "status": 200, …}

A failure's traceback is one ``traceback`` field of its event, never
separate lines.

The access event of every request (:mod:`stor.observe.access`) is one event like
any other here.

twistd builds its log observer from its own ``--logger`` option (read when
the options are parsed, before ``makeService`` runs);
:class:`~stor.process.service.Options` calls :func:`use_format`, which records
the format and where twistd would have written (stdout or ``--logfile``) and
returns the ``--logger`` value naming :func:`observer_factory`.  An explicit
``--logger`` or ``--syslog`` is left alone.
"""

import json
import os
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import (
    ILogObserver, LogEvent, formatEvent, formatEventAsClassicLogText, formatTime,
)
from twisted.python import logfile, threadable
from zope.interface import implementer

from stor.core.reconnect import quiet

LOG_FORMATS = ("text", "json")

# Legacy (twisted.python.log) keys that duplicate or clash with the JSON record's own.
_SKIP = frozenset({"message", "format", "isError", "time", "failure", "why", "system",
                   "log_legacy", "outcome", "access_line"})

def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def event_as_record(event: LogEvent) -> dict[str, Any]:
    """The flat JSON-able record of one event (what a ``json`` log line holds)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "pid": os.getpid(),
    }
    message = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        record["traceback"] = failure.getTraceback()
        message = message or record["error"]
    system = event.get("system") or event.get("log_system")
    if system and system != "-":
        record["system"] = str(system)
    record["message"] = message
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in record:
            continue
        record[key] = _jsonable(value)
    return record


def format_json_line(event: LogEvent) -> str:
    """One event as one line of JSON (never a line break inside)."""
    try:
        return json.dumps(event_as_record(event), ensure_ascii=False) + "\n"
    except Exception as e:  # a log line must never crash the daemon
        return json.dumps({"level": "error", "namespace": "stor.observe.logs", "pid": os.getpid(),
                           "message": f"unloggable event: {e!r}"}) + "\n"


def json_file_observer(out: IO[str]) -> "BatchedFileLogObserver":
    """An observer writing :func:`format_json_line` lines to ``out``."""
    return BatchedFileLogObserver(out, format_json_line)


class TextLines:
    """twistd's classic line with this process's pid after the time stamp.

    Built for the log's hot spot, the access event of every request: its text
    is pre-formatted (``access_line``) and time stamps are formatted once a
    second, so such a line is one f-string, where twisted.logger's classic
    formatter parses the format string and calls ``strftime`` each time.
    Every other event goes through twisted.logger's formatter unchanged.
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._second = -1
        self._stamp = "-"

    def __call__(self, event: LogEvent) -> str:
        when = event.get("log_time")
        stamp = self._stamp_of(when)
        access = event.get("access_line")
        if access is not None and event.get("log_namespace") == "stor.access":
            return f"{stamp} [{self._pid}] [stor.access#info] {access}\n"
        line = formatEventAsClassicLogText(event, formatTime=lambda _: stamp)
        if not line:
            return ""
        return f"{stamp} [{self._pid}] {line.partition(' ')[2]}"

    def _stamp_of(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._stamp = second, formatTime(when)
        return self._stamp


format_text_line = TextLines()
"""One event as twistd's text line, with the pid (the ``text`` format)."""


@implementer(ILogObserver)
class BatchedFileLogObserver:
    """Writes formatted events to ``out``, flushed once per turn of the event loop.

    twisted.logger's FileLogObserver flushes after every event: a system call
    for every request's access line.  Here the lines of one turn of the
    reactor go out together (at most one turn late); events from other
    threads, and any before the reactor runs, are flushed at once.
    """

    def __init__(self, out: IO[str], format_event: Callable[[LogEvent], str | None]) -> None:
        self._out = out
        self._format = format_event
        self._lock = threading.Lock()
        self._scheduled = False

    def __call__(self, event: LogEvent) -> None:
        text = self._format(event)
        if not text:
            return
        with self._lock:
            self._out.write(text)
        if not self._later():
            self.flush()

    def _later(self) -> bool:
        """Flush at the end of this turn of the reactor, if on its thread and it runs."""
        from twisted.internet import reactor

        if not reactor.running or not threadable.isInIOThread():
            return False
        if not self._scheduled:
            self._scheduled = True
            reactor.callLater(0, self.flush)
        return True

    def flush(self) -> None:
        self._scheduled = False
        with self._lock:
            try:
                self._out.flush()
            except (OSError, ValueError):  # a closed or full log must not stop stor
                pass


def text_file_observer(out: IO[str]) -> BatchedFileLogObserver:
    """An observer writing :func:`format_text_line` lines to ``out``."""
    return BatchedFileLogObserver(out, TextLines())


# -- twistd wiring --------------------------------------------------------------

OBSERVER_FACTORY = "stor.observe.logs.observer_factory"
"""The ``--logger`` value that makes twistd log through :func:`observer_factory`."""

_output: Callable[[], IO[str]] | None = None
_format = "text"


def use_format(log_format: str, logfile_option: str | None, nodaemon: bool) -> str:
    """Remember the format and where twistd would log; the ``--logger`` value to set.

    ``logfile_option`` and ``nodaemon`` are twistd's ``--logfile`` and
    ``--nodaemon``: stdout for ``-`` or a foreground process without a log
    file, else the file (rotated on SIGUSR1 unless a handler is there, as
    twistd does).
    """
    global _output, _format

    def open_output() -> IO[str]:
        if logfile_option == "-" or (nodaemon and not logfile_option):
            return sys.stdout
        opened = logfile.LogFile.fromFullPath(logfile_option or "twistd.log")
        _rotate_on_sigusr1(opened)
        return opened

    _format = log_format
    _output = open_output
    return OBSERVER_FACTORY


def _rotate_on_sigusr1(opened: logfile.LogFile) -> None:
    """twistd's own behaviour for ``--logfile``: SIGUSR1 rotates it, if nobody else wants it."""
    import signal

    from stor.core.reactor import the_reactor  # not at the top: the log setup stays light

    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: object) -> None:
        the_reactor().callFromThread(opened.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def observer_factory() -> ILogObserver:
    """twistd's ``--logger``: lines of the chosen format where twistd would have written,
    without the reconnecting clients' line per attempt (:func:`stor.core.reconnect.quiet`)."""
    out = _output() if _output is not None else sys.stdout
    if _format == "json":
        return quiet(json_file_observer(out))
    return quiet(text_file_observer(out))
