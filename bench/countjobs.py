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
_batches = [0]
_lock = threading.Lock()
_real_run = diskpool.DiskPool.run


def _counted(self, f, *args):  # type: ignore[no-untyped-def]
    with _lock:
        _count[0] += 1
    return _real_run(self, f, *args)


_real_store_all = batch.SmallBatcher._store_all


def _counted_batch(self, jobs):  # type: ignore[no-untyped-def]
    with _lock:
        _batches[0] += 1
    return _real_store_all(self, jobs)


def _report(signum, frame):  # type: ignore[no-untyped-def]
    print(f"stor-bench-jobs {_count[0]} batches {_batches[0]}", file=sys.stderr, flush=True)


diskpool.DiskPool.run = _counted  # type: ignore[method-assign]
batch.SmallBatcher._store_all = _counted_batch  # type: ignore[method-assign]
signal.signal(signal.SIGUSR2, _report)
sys.argv[0] = "twistd"
run()
