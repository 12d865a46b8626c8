"""One line per item: ``<sha>  <name>  <status>`` (and the reason, for a failure).

Successes go to stdout, failures to stderr: stdout then lists exactly what
is stored (or fetched), in the same two leading columns as ``sha256sum``, so
``stor put … | stor get`` and ``sha256sum * | stor get`` both work.
"""

from dataclasses import dataclass
from typing import TextIO

from stor.client.progress import Progress


@dataclass(frozen=True)
class Result:
    """How one item ended."""

    sha: str
    """The item's SHA, or ``-`` when a local file could not even be hashed."""
    name: str
    """The local file (put, get) or the URL (verify)."""
    status: str
    """The deciding HTTP status (``201``, ``200``, ``206``, ``404``…) or a word."""
    ok: bool
    reason: str = ""

    def line(self) -> str:
        text = f"{self.sha}  {self.name}  {self.status}"
        if not self.ok and self.reason:
            text += f"  {self.reason}"
        return text


class Reporter:
    """Writes each result as it comes, around the progress bar."""

    def __init__(self, out: TextIO, err: TextIO, progress: Progress) -> None:
        self._out = out
        self._err = err
        self.progress = progress
        self.failed = 0

    def report(self, result: Result) -> None:
        if not result.ok:
            self.failed += 1
        self.progress.item_done(result.ok)
        self.progress.print_line(self._out if result.ok else self._err, result.line())

    def exit_status(self) -> int:
        """0 when every item succeeded, 1 when any failed."""
        return 1 if self.failed else 0
