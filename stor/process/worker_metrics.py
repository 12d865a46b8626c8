"""``process_*`` metrics of every ``--workers`` process, whichever answers ``/metrics``.

prometheus-client's multiprocess mode sums counters over the workers through
files, but its ``ProcessCollector`` only knows the process it runs in, so
the multiprocess registry leaves it out and the ``process_*`` series vanish.
Here every worker announces itself (slot and pid) with a small file in the
shared metrics directory, and the collector of whichever worker is scraped
reads ``/proc/<pid>/…`` of the parent and of every live worker at scrape time
(the scrape runs in the disk pool, never on the reactor)::

    process_resident_memory_bytes{worker="0",pid="4243"} 5.1e+07
    process_resident_memory_bytes{worker="parent",pid="4242"} 3.0e+07

A worker's file stays until its replacement overwrites it; only a process
that is alive and still a child of the parent is reported, so a dead
worker's series end when it dies.  Linux only (``/proc``), as stor is.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

SLOT_ENV = "STOR_WORKER"
PARENT_ENV = "STOR_PARENT_PID"
LABELS = ("worker", "pid")
_PREFIX, _SUFFIX = "worker-", ".pid"


@dataclass(frozen=True)
class ProcessStats:
    """What ``ProcessCollector`` reports, for one process."""

    ppid: int
    cpu_seconds: float
    resident_bytes: int
    virtual_bytes: int
    start_time: float
    open_fds: int | None
    max_fds: int | None


def announce(directory: str, slot: str, pid: int) -> None:
    """Record that worker ``slot`` is process ``pid`` (atomically: a scrape never reads half)."""
    path = os.path.join(directory, f"{_PREFIX}{slot}{_SUFFIX}")
    temp = f"{path}.{pid}.tmp"
    with open(temp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(temp, path)


def announced(directory: str) -> dict[str, int]:
    """``{slot: pid}`` of every worker that announced itself (live or not)."""
    found: dict[str, int] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
            try:
                with open(os.path.join(directory, name)) as f:
                    found[name[len(_PREFIX):-len(_SUFFIX)]] = int(f.read().strip())
            except (OSError, ValueError):
                continue  # replaced or removed while we read
    return found


class ProcFS:
    """Reads one process's figures from ``/proc`` (the root is a parameter for tests)."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._boot = self._boot_time()

    def _boot_time(self) -> float:
        with open(os.path.join(self.root, "stat"), "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
        raise OSError(f"no btime in {self.root}/stat")

    def stats(self, pid: int) -> ProcessStats | None:
        """The figures of ``pid``; None when it is gone or a zombie."""
        try:
            with open(os.path.join(self.root, str(pid), "stat"), "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if fields[0] in (b"Z", b"X"):
            return None
        return ProcessStats(
            ppid=int(fields[1]),
            cpu_seconds=(int(fields[11]) + int(fields[12])) / self._ticks,
            resident_bytes=int(fields[21]) * self._page,
            virtual_bytes=int(fields[20]),
            start_time=int(fields[19]) / self._ticks + self._boot,
            open_fds=self._open_fds(pid),
            max_fds=self._max_fds(pid),
        )

    def _open_fds(self, pid: int) -> int | None:
        try:
            return len(os.listdir(os.path.join(self.root, str(pid), "fd")))
        except OSError:
            return None

    def _max_fds(self, pid: int) -> int | None:
        try:
            with open(os.path.join(self.root, str(pid), "limits")) as f:
                for line in f:
                    if line.startswith("Max open files"):
                        soft = line.split()[3]
                        return int(soft) if soft.isdigit() else None
        except OSError:
            pass
        return None


class WorkerProcesses:
    """A collector of the ``process_*`` figures of the parent and its live workers."""

    def __init__(self, directory: str, parent: int, proc: ProcFS | None = None) -> None:
        self._directory = directory
        self._parent = parent
        self._proc = proc or ProcFS()

    def members(self) -> list[tuple[str, int, ProcessStats]]:
        """(worker label, pid, figures) of the parent and every live worker, by slot."""
        found = []
        parent = self._proc.stats(self._parent)
        if parent is not None:
            found.append(("parent", self._parent, parent))
        seen = {self._parent}
        for slot, pid in sorted(announced(self._directory).items()):
            stats = self._proc.stats(pid)
            if pid not in seen and stats is not None and stats.ppid == self._parent:
                seen.add(pid)
                found.append((slot, pid, stats))
        return found

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The families (empty), so registering does not read /proc."""
        return self._families([])

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return self._families(self.members())

    def _families(self, members: list[tuple[str, int, ProcessStats]]
                  ) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cpu = CounterMetricFamily("process_cpu_seconds", "Total user and system CPU time "
                                  "spent in seconds, per stor process.", labels=LABELS)
        families = {
            "resident_bytes": GaugeMetricFamily("process_resident_memory_bytes",
                                                "Resident memory size in bytes.", labels=LABELS),
            "virtual_bytes": GaugeMetricFamily("process_virtual_memory_bytes",
                                               "Virtual memory size in bytes.", labels=LABELS),
            "start_time": GaugeMetricFamily("process_start_time_seconds", "Start time of the "
                                            "process since unix epoch in seconds.", labels=LABELS),
            "open_fds": GaugeMetricFamily("process_open_fds", "Number of open file descriptors.",
                                          labels=LABELS),
            "max_fds": GaugeMetricFamily("process_max_fds",
                                         "Maximum number of open file descriptors.",
                                         labels=LABELS),
        }
        for label, pid, stats in members:
            labels = [label, str(pid)]
            cpu.add_metric(labels, stats.cpu_seconds)
            for field, family in families.items():
                value = getattr(stats, field)
                if value is not None:
                    family.add_metric(labels, value)
        yield cpu
        yield from families.values()


def register_worker_processes(registry: CollectorRegistry, directory: str,
                              environ: "os._Environ[str] | dict[str, str] | None" = None) -> bool:
    """In a ``--workers`` child: announce this worker and report every process's figures.

    Returns False (and does nothing) outside a worker.  Call before the reactor runs.
    """
    env = os.environ if environ is None else environ
    slot, parent = env.get(SLOT_ENV, ""), env.get(PARENT_ENV, "")
    if not slot or not parent.isdigit():
        return False
    announce(directory, slot, os.getpid())
    registry.register(WorkerProcesses(directory, int(parent)))
    return True
