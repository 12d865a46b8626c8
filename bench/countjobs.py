"""twistd with the disk pool's jobs and the small-upload batches counted: SIGUSR2
prints ``stor-bench-jobs <jobs> batches <batches>``.

Run by ``countjobs.sh`` for ``profile_small.py``; never part of a served stor.
"""

import signal
import sys
import threading

from twisted.scripts.twistd import run

from stor.disk import batch, diskpool

_count = [0]
_batchers: list[batch.SmallBatcher] = []
_lock = threading.Lock()
_real_run = diskpool.DiskPool.run


def _counted(self, f, *args):  # type: ignore[no-untyped-def]
    with _lock:
        _count[0] += 1
    return _real_run(self, f, *args)


_real_init = batch.SmallBatcher.__init__


def _kept(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    """The daemon's batchers, whose own count (``batches``) the report reads."""
    _real_init(self, *args, **kwargs)
    _batchers.append(self)


def _report(signum, frame):  # type: ignore[no-untyped-def]
    batches = sum(b.batches for b in _batchers)
    print(f"stor-bench-jobs {_count[0]} batches {batches}", file=sys.stderr, flush=True)


diskpool.DiskPool.run = _counted  # type: ignore[method-assign]
batch.SmallBatcher.__init__ = _kept  # type: ignore[method-assign]
signal.signal(signal.SIGUSR2, _report)
sys.argv[0] = "twistd"
run()
