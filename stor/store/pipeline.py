"""Batches of an upload's body through parallel lanes: hashing and each replica's writes.

Hashing a chunk and writing it to each member of a pair are independent, and
``hashlib`` and ``os.write`` release the GIL: done one after the other they
add up, done side by side they overlap (each other, and the reactor receiving
the next chunks).  A :class:`Pipeline` gives every lane every batch, in order,
one batch at a time per lane, on the shared disk pool; a batch is let go once
every lane is done with it, so memory is bounded by what the caller pushes.
"""

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

Runner = Callable[..., Deferred[Any]]
LaneWork = Callable[[list[bytes]], object]


@dataclass
class _Batch:
    chunks: list[bytes]
    size: int
    remaining: int


@dataclass
class _Lane:
    work: LaneWork
    pending: deque[_Batch] = field(default_factory=deque)
    busy: bool = False


class Pipeline:
    """Runs each of ``lanes`` over every batch pushed, lanes in parallel.

    ``changed`` is called (on the reactor) each time a lane finishes a batch.
    A lane's exception is kept in :attr:`error` (lanes are expected not to
    raise: a failing replica is dropped by its own lane).
    """

    def __init__(self, run: Runner, lanes: Sequence[LaneWork], changed: Callable[[], None]) -> None:
        self._run = run
        self._lanes = [_Lane(work) for work in lanes]
        self._changed = changed
        self.in_flight = 0
        """Bytes pushed that some lane has yet to finish."""
        self.error: Failure | None = None

    @property
    def idle(self) -> bool:
        return not any(lane.busy or lane.pending for lane in self._lanes)

    @property
    def backlog(self) -> int:
        """Batches the slowest lane has not started yet."""
        return max(len(lane.pending) for lane in self._lanes)

    def push(self, chunks: list[bytes]) -> None:
        batch = _Batch(chunks, sum(len(c) for c in chunks), len(self._lanes))
        self.in_flight += batch.size
        for lane in self._lanes:
            lane.pending.append(batch)
            self._start(lane)

    def _start(self, lane: _Lane) -> None:
        if lane.busy or not lane.pending:
            return
        batch = lane.pending.popleft()
        lane.busy = True
        self._run(lane.work, batch.chunks).addBoth(self._done, lane, batch)

    def _done(self, result: object, lane: _Lane, batch: _Batch) -> None:
        lane.busy = False
        if isinstance(result, Failure) and self.error is None:
            self.error = result
        batch.remaining -= 1
        if batch.remaining == 0:
            self.in_flight -= batch.size
        self._start(lane)
        self._changed()
