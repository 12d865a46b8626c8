"""A one-line progress bar on stderr when it is a terminal; nothing otherwise.

Redrawn a few times a second (not on every chunk) from the reactor; result
lines printed meanwhile clear the bar, appear above it, and the bar comes back.
"""

import shutil
import time
from collections import deque
from typing import Any, TextIO

from twisted.internet.task import LoopingCall

from stor.core.reactor import Reactor

REFRESH = 0.2
"""Seconds between redraws."""


def human(n: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("not reached")


def clock_time(seconds: float) -> str:
    """``0:41``, ``12:05``, ``3:02:10``: an ETA for people."""
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts items and bytes moved, with their rate and an ETA; draws them when ``enabled``.

    ``put`` knows every size before it starts (``total_bytes``): its work is
    hashing each file, then sending it, so the bar and the ETA cover both
    (a file the server already holds counts as sent).  ``get`` and ``verify``
    learn sizes as transfers start (:meth:`add_expected`): their bar counts
    files, since a byte total that grows as it goes would make it run
    backwards, and the ETA covers the transfers under way.
    """

    def __init__(self, reactor: Reactor, stream: TextIO, label: str, items: int,
                 enabled: bool, clock: Any = time.monotonic,
                 total_bytes: int | None = None) -> None:
        self._stream = stream
        self._label = label
        self._items = items
        self.enabled = enabled
        self._clock = clock
        self.done = 0
        self.failed = 0
        self.bytes = 0
        self.hashed = 0
        self.expected = 0
        self._total = total_bytes
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(3 / REFRESH))
        self._drawn = False
        self._loop = LoopingCall(self.draw)
        self._loop.clock = reactor

    def start(self) -> None:
        if self.enabled:
            self._loop.start(REFRESH, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self.enabled:
            self.draw()
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def add_bytes(self, n: int) -> None:
        self.bytes += n

    def add_hashed(self, n: int) -> None:
        self.hashed += n

    def add_expected(self, n: int) -> None:
        """A transfer of ``n`` bytes has begun (its size was unknown before)."""
        self.expected += n

    def item_done(self, ok: bool) -> None:
        self.done += 1
        if not ok:
            self.failed += 1

    def print_line(self, stream: TextIO, text: str) -> None:
        """Print a result line above the bar."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False
        stream.write(text + "\n")
        stream.flush()
        if self.enabled and self._loop.running:
            self.draw()

    def text(self) -> str:
        """The bar's text, e.g. ``put [####----------------] 3/10 files  hashed 3.0 GiB/3.0 GiB
        sent 1.2 GiB/3.0 GiB  45.0 MiB/s  ETA 0:41`` or ``get [#------…] 37/100 files
        1.2 GiB/2.0 GiB  45.0 MiB/s  ETA 0:18``."""
        now = self._clock()
        work = self.hashed + self.bytes
        self._samples.append((now, work))
        first_t, first_w = self._samples[0]
        rate = (work - first_w) / (now - first_t) if now > first_t else 0.0
        if self._total is not None:
            whole = 2 * self._total
            share = work / whole if whole else 1.0
            moved = (f"hashed {human(self.hashed)}/{human(self._total)}"
                     f"  sent {human(self.bytes)}/{human(self._total)}")
            left = whole - work
        else:
            share = self.done / self._items if self._items else 1.0
            moved = human(self.bytes) + (f"/{human(self.expected)}" if self.expected else "")
            left = self.expected - self.bytes
        bar = "#" * int(min(1.0, share) * 20)
        text = (f"{self._label} [{bar:-<20}] {self.done}/{self._items} files  {moved}"
                f"  {human(rate)}/s")
        if rate > 0 and left > 0:
            text += f"  ETA {clock_time(left / rate)}"
        if self.failed:
            text += f"  {self.failed} failed"
        return text

    def draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        self._stream.write("\r" + self.text()[: max(10, width - 1)] + "\x1b[K")
        self._stream.flush()
        self._drawn = True
