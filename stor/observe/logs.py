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

**Logs carry input, never structure** (docs/security.rst): whatever a request
brings (its segment, user, headers, URI) may hold control characters — a LF
forging a log line, a CR or terminal escape rewriting one on screen.
:func:`escape_controls` is the one function that writes them as ``\\xNN``;
every output applies it where it formats an event (:func:`clean_text` for a
message, :func:`event_as_record` for the fields of JSON and GELF, the File,
Screen and Syslog outputs through :func:`stor.observe.log_outputs.event_text`).

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
import re
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
from stor.observe.policy import LogPolicy, filtered, own_log_policy

LOG_FORMATS = ("text", "json")

# Legacy (twisted.python.log) keys that duplicate or clash with the JSON record's own.
_SKIP = frozenset({"message", "format", "isError", "time", "failure", "why", "system",
                   "log_legacy", "outcome", "access_line"})

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, keep_lines: bool = False) -> str:
    """``text`` with every control character (C0, DEL, C1, line separators) as ``\\xNN``.

    ``keep_lines`` keeps LF and TAB: for a traceback, whose line structure is
    stor's own (its other characters are escaped all the same).  Printable
    text, nearly every line, is returned as it is after one C-level test.
    """
    if text.isprintable():
        return text
    return (_CONTROLS_BUT_LINES if keep_lines else _CONTROLS).sub(_escape, text)


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def hide_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URI in it written ``***@``.

    An absolute-form request line (``http://user:pass@host/<sha>``) or a
    broker URI must never put a password in a log.
    """
    if "@" not in text or "://" not in text:
        return text
    return _USERINFO.sub(r"\1***@", text)


def safe_text(text: str) -> str:
    """What any output may write of ``text``: control characters escaped, no userinfo."""
    return hide_userinfo(escape_controls(text))


def safe_traceback(failure: Any) -> str:
    """A failure's traceback, its lines kept (stor's structure) but its exception's message
    — which may quote a request — escaped whole, line breaks included."""
    try:
        text = failure.getTraceback().rstrip("\n")
        message = failure.getErrorMessage()
    except Exception:
        return safe_text(repr(failure))
    if message and not message.isprintable():
        head, found, tail = text.rpartition(message)
        if found:
            text = head + escape_controls(message) + tail
    return hide_userinfo(escape_controls(text, keep_lines=True))


def clean_text(event: LogEvent) -> str:
    """The event's formatted message on one line, control characters escaped, no userinfo."""
    return safe_text(formatEvent(event))


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return safe_text(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    if isinstance(value, bytes):
        return safe_text(value.decode("utf-8", "replace"))
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
    message = clean_text(event)
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = safe_text(f"{failure.type.__name__}: {failure.getErrorMessage()}")
        record["traceback"] = safe_traceback(failure)
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
            return f"{stamp} [{self._pid}] [stor.access#info] {safe_text(access)}\n"
        line = formatEventAsClassicLogText(_escaped_event(event), formatTime=lambda _: stamp)
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


def _escaped_event(event: LogEvent) -> LogEvent:
    """``event`` with its message pre-formatted and escaped (its traceback: lines kept)."""
    escaped = dict(event, log_format="{log_escaped_text}", log_escaped_text=clean_text(event))
    failure = event.get("log_failure")
    if failure is not None:
        escaped.pop("log_failure")
        text = escaped["log_escaped_text"]
        tb = safe_traceback(failure)
        escaped["log_escaped_text"] = f"{text}\n{tb}" if text else tb
    escaped["system"] = escape_controls(str(event.get("log_system") or event.get("system") or "-"))
    return escaped


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


_policy = own_log_policy()


def use_policy(policy: LogPolicy) -> None:
    """The config's ``log_level`` and ``access_log_skip``, for :func:`observer_factory`
    (twistd calls it after ``makeService``, which reads the config)."""
    global _policy
    _policy = policy


def observer_factory() -> ILogObserver:
    """twistd's ``--logger``: lines of the chosen format where twistd would have written,
    without the reconnecting clients' line per attempt (:func:`stor.core.reconnect.quiet`)
    and what the log policy leaves out (:mod:`stor.observe.policy`)."""
    out = _output() if _output is not None else sys.stdout
    if _format == "json":
        return quiet(filtered(json_file_observer(out), _policy))
    return quiet(filtered(text_file_observer(out), _policy))
