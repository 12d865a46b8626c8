"""The access event: one log event per request, when its answer is finished
or its connection lost (namespace ``stor.access``), replacing twisted.web's
combined log line.  Its fields are :data:`ACCESS_FIELDS`; how it is written
(text or JSON) is the log observers' business (:mod:`stor.observe.logs`).
"""

import time

from twisted.logger import LogLevel, Logger, globalLogPublisher

access_log = Logger(namespace="stor.access")

ACCESS_FIELDS = ("method", "path", "sha", "status", "bytes_sent", "bytes_received",
                 "duration_ms", "peer", "user_agent", "completed")


def emit_access(method: str, path: str, sha: str | None, status: int, bytes_sent: int,
                bytes_received: int, duration_ms: float, peer: str, user_agent: str,
                completed: bool) -> None:
    """Log the one access event of a request (its fields: :data:`ACCESS_FIELDS`).

    On a busy host this event is most of the log, so it is built as cheaply as
    a log event can be: the text line once, here (the event's format is just
    ``{access_line}``, which the text observer uses as is), and the event
    handed straight to the log publisher, as ``Logger.info`` would.
    """
    outcome = "" if completed else " (connection lost before the end)"
    line = (f"{method} {path} {status} sent={bytes_sent} received={bytes_received} "
            f"{duration_ms:.1f}ms peer={peer}{outcome}")
    globalLogPublisher({
        "log_logger": access_log, "log_level": LogLevel.info, "log_namespace": "stor.access",
        "log_source": None, "log_format": "{access_line}", "log_time": time.time(),
        "access_line": line, "method": method, "path": path, "sha": sha, "status": status,
        "bytes_sent": bytes_sent, "bytes_received": bytes_received,
        "duration_ms": duration_ms, "peer": peer, "user_agent": user_agent,
        "completed": completed,
    })
