"""Log output: ``--log-format text|json``.

Everything stor logs goes through :mod:`twisted.logger`.  ``text`` is twistd's
own format (one line per event, tracebacks as indented lines).  ``json`` is one
JSON object per line, for log shippers::

    {"time": "2025-01-01T12:00:00.123456+00:00", "level": "info",
     "namespace": "stor.access", "pid": 1234, "message": "GET /… 200 …",
     "method": "GET", "path": "/…", "sha": "…", "status": 200, …}

A failure's traceback is one ``traceback`` field of its event, never
separate lines.

The access event of every request (:mod:`stor.http.access`) is one event like
any other here.

twistd builds its log observer before ``makeService`` runs, from its own
``--logger`` option; :class:`~stor.ops.service.Options` points that option at
:func:`observer_factory` when ``--log-format json`` is given, after recording
here where twistd would have written (stdout or ``--logfile``).
"""

import json
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python import logfile

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
        return json.dumps({"level": "error", "namespace": "stor.ops.logs", "pid": os.getpid(),
                           "message": f"unloggable event: {e!r}"}) + "\n"


def json_file_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing :func:`format_json_line` lines to ``out``."""
    return FileLogObserver(out, format_json_line)


# -- twistd wiring --------------------------------------------------------------

_output: Callable[[], IO[str]] | None = None


def use_json(logfile_option: str | None, nodaemon: bool) -> None:
    """Remember where twistd would log (its ``--logfile``, ``--nodaemon``), for JSON."""
    global _output

    def open_output() -> IO[str]:
        if logfile_option == "-" or (nodaemon and not logfile_option):
            return sys.stdout
        return logfile.LogFile.fromFullPath(logfile_option or "twistd.log")  # type: ignore[return-value]

    _output = open_output


def observer_factory() -> ILogObserver:
    """twistd's ``--logger``: JSON lines where twistd would have written text."""
    out = _output() if _output is not None else sys.stdout
    return json_file_observer(out)

