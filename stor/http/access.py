"""The access event: one log event per request, when its answer is finished
or its connection lost (namespace ``stor.access``), replacing twisted.web's
combined log line.  Its fields are :data:`ACCESS_FIELDS`; how it is written
(text or JSON) is the log observers' business (:mod:`stor.ops.logs`).
"""

from typing import Any

from twisted.logger import Logger

access_log = Logger(namespace="stor.access")

ACCESS_FORMAT = (
    "{method} {path} {status} sent={bytes_sent} received={bytes_received} "
    "{duration_ms:.1f}ms peer={peer}{outcome}"
)
ACCESS_FIELDS = ("method", "path", "sha", "status", "bytes_sent", "bytes_received",
                 "duration_ms", "peer", "user_agent", "completed")


def emit_access(**fields: Any) -> None:
    """Log the one access event of a request (fields: :data:`ACCESS_FIELDS`).

    The text line is built here, once, and the event's format is just
    ``{access_line}``: twisted.logger re-parses a format string for every
    observer, and on a busy host this event is most of the log.
    """
    outcome = "" if fields.get("completed", True) else " (connection lost before the end)"
    line = ACCESS_FORMAT.format(outcome=outcome, **fields)
    access_log.info("{access_line}", access_line=line, **fields)
