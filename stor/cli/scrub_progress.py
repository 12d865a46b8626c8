"""How far ``stor scrub`` got: a redrawn line on a terminal, a log line every N seconds elsewhere.

Both show the same figures, against the totals of the first (``stat``-only)
pass::

    scrub: 1,234/5,000 files, 1.2/5.0 GB (24%), 45.3 MB/s, 27s elapsed, ETA 1m23s

The percentage and the ETA follow bytes (hashing time is reading time);
a tree with no bytes to read falls back to files.  While the first pass runs
the line says what it has counted so far.  Not on a terminal (cron, a
systemd timer, a pipe), the first line comes after ``every`` seconds, so a
short scrub writes nothing to stderr.
"""

import time
from collections.abc import Callable
from typing import TextIO

REDRAW = 0.2
"""Seconds between redraws of the terminal line."""


class Progress:
    """Counts what the scrub did against the first pass's totals, and shows it now and then.

    ``terminal``: redraw one line in place every :data:`REDRAW` seconds;
    otherwise write a full line every ``every`` seconds.
    """

    def __init__(self, stream: TextIO, terminal: bool, every: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.files = self.bytes = 0
        self.total_files = self.total_bytes = 0
        self.counting = True
        self._stream, self._terminal = stream, terminal
        self._clock = clock
        self._interval = REDRAW if terminal else every
        self._start = clock()
        self._shown_at = float("-inf") if terminal else self._start
        self._dirty = False

    # -- the first pass -------------------------------------------------------

    def counted(self, size: int) -> None:
        """One more file to hash, of ``size`` bytes (the first pass)."""
        self.total_files += 1
        self.total_bytes += size
        self._maybe_show()

    def counting_done(self) -> None:
        """The totals are known; the scrub (and its rate) starts now."""
        self.counting = False
        self._start = self._clock()

    # -- the scrub (stor.disk.scrub.ProgressSink) -----------------------------

    def add_file(self) -> None:
        self.files += 1
        self._maybe_show()

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        self._maybe_show()

    # -- display ----------------------------------------------------------------

    def clear(self) -> None:
        """Erase the terminal line, so other output starts on a clean line."""
        if self._dirty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._dirty = False
            self._shown_at = float("-inf")

    def figures(self, now: float) -> str:
        """What the line says at ``now``."""
        if self.counting:
            return f"counting: {self.total_files:,} files, {size(self.total_bytes)} so far"
        elapsed = max(now - self._start, 0.0)
        done, total = (self.bytes, self.total_bytes) if self.total_bytes else \
            (self.files, self.total_files)
        part = min(done / total, 1.0) if total else 1.0
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        return (f"{self.files:,}/{self.total_files:,} files, "
                f"{size(self.bytes)}/{size(self.total_bytes)} ({part:.0%}), "
                f"{rate / 1e6:.1f} MB/s, {duration(elapsed)} elapsed, "
                f"ETA {eta(done, total, elapsed)}")

    def _maybe_show(self) -> None:
        now = self._clock()
        if now - self._shown_at < self._interval:
            return
        self._shown_at = now
        if self._terminal:
            self._stream.write(f"\r\x1b[Kscrub: {self.figures(now)}")
            self._dirty = True
        else:
            self._stream.write(f"stor scrub: {self.figures(now)}\n")
        self._stream.flush()


def size(n: int) -> str:
    """Bytes in decimal units, as ``--max-mbps`` counts them: ``812.3 MB``, ``1.2 TB``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e6:.1f} MB"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(done: int, total: int, elapsed: float) -> str:
    """Time left at the rate so far; ``?`` until there is a rate."""
    if done >= total:
        return "0s"
    if done <= 0 or elapsed <= 0:
        return "?"
    return duration((total - done) * elapsed / done)
