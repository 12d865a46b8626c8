"""Read faults: a replica that failed to be read is a storage fault, not a miss.

Whoever reads a replica for an answer — the lookup (open, the first block, a
small file whole), a streamed body, the re-read before a quarantine — and
meets an error other than "not there" (``EIO``, ``EACCES``, ...), a read
that stalls past ``read_hedge_after``, or bytes that hash wrong but right
when read again from the disk, tells the one :class:`ReadFaults` of the
process, on the reactor.  Each fault is

- logged once, as a warning of namespace ``stor.disk.readfaults`` with the
  fields ``storage``, ``path``, ``kind`` (``error``, ``stall``, ``misread``)
  and ``error``;
- counted: statsite ``error.read.<server>.count``, Prometheus
  ``stor_read_errors_total{storage}``;
- kept per storage (count, last fault, when) for the health report: ``/status``
  JSON shows it as ``read_faults`` of the storage.

A read fault does not take the storage out of service: one bad sector makes
one file unreadable there, not the others, and the twin serves that file.
The operator sees the count rise (an alert on the counter) and ``stor scrub``
finds which files are affected.
"""

import threading
import time
from dataclasses import dataclass

from twisted.logger import Logger

from stor.core import layout
from stor.core.metrics import Metrics, NullMetrics

log = Logger(namespace="stor.disk.readfaults")


@dataclass(frozen=True)
class ReadFault:
    """One failed read of one replica."""

    storage: str
    path: str
    kind: str
    """``error`` (the call failed), ``stall`` (past ``read_hedge_after``), ``misread``
    (wrong bytes once, right when read again from the disk)."""
    error: str


def fault_of(storage: str, path: str, error: BaseException | str, kind: str = "error") -> ReadFault:
    """A :class:`ReadFault` from an exception (``strerror`` when it has one) or a text."""
    if isinstance(error, OSError):
        text = f"{error.strerror or error}"
        if error.errno is not None:
            text = f"[Errno {error.errno}] {text}"
    else:
        text = str(error)
    return ReadFault(storage, path, kind, text)


@dataclass(frozen=True)
class StorageReadFaults:
    """What the health report shows of a storage's read faults."""

    count: int
    last: str
    at: float

    def as_json(self) -> dict[str, object]:
        return {"count": self.count, "last": self.last,
                "seconds_ago": round(time.time() - self.at, 1)}


class ReadFaults:
    """Logs, counts and keeps the read faults of every storage (see the module docstring).

    :meth:`record` runs on the reactor (it counts through ``metrics``);
    :meth:`of` may be called from any thread.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics: Metrics = metrics or NullMetrics()
        self._faults: dict[str, StorageReadFaults] = {}
        self._lock = threading.Lock()

    def record(self, fault: ReadFault) -> None:
        """One fault: logged, counted, kept."""
        log.warn("read fault on {storage}: {path} ({kind}): {error}", path=fault.path,
                 storage=fault.storage, kind=fault.kind, error=fault.error)
        self._metrics.incr(f"error.read.{layout.server_name(fault.storage)}.count")
        with self._lock:
            before = self._faults.get(fault.storage)
            count = (before.count if before else 0) + 1
            self._faults[fault.storage] = StorageReadFaults(
                count, f"{fault.path}: {fault.error} ({fault.kind})", time.time())

    def of(self, storage: str) -> StorageReadFaults | None:
        """The read faults seen on ``storage`` since the start (None: none)."""
        with self._lock:
            return self._faults.get(storage)
