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


class Progress:
    """Counts items (the bar) and bytes moved (with their rate); draws them when ``enabled``.

    The bar counts files, not bytes: sizes are learnt only as transfers start,
    and a byte total that grows as it goes would make the bar run backwards.
    """

    def __init__(self, reactor: Reactor, stream: TextIO, label: str, items: int,
                 enabled: bool, clock: Any = time.monotonic) -> None:
        self._stream = stream
        self._label = label
        self._items = items
        self.enabled = enabled
        self._clock = clock
        self.done = 0
        self.failed = 0
        self.bytes = 0
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
        """The bar's text, e.g. ``get [#######-------------] 37/100 files  1.2 GiB  45.0 MiB/s``."""
        now = self._clock()
        self._samples.append((now, self.bytes))
        first_t, first_b = self._samples[0]
        rate = (self.bytes - first_b) / (now - first_t) if now > first_t else 0.0
        share = self.done / self._items if self._items else 1.0
        bar = "#" * int(share * 20)
        text = (f"{self._label} [{bar:-<20}] {self.done}/{self._items} files  {human(self.bytes)}"
                f"  {human(rate)}/s")
        if self.failed:
            text += f"  {self.failed} failed"
        return text

    def draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        self._stream.write("\r" + self.text()[: max(10, width - 1)] + "\x1b[K")
        self._stream.flush()
        self._drawn = True
