"""Run by test_s3put: put files with S3Writer and report the process's peak RSS.

Usage: ``python s3put_child.py JOB_JSON``; prints one JSON object.  The peak
(``VmHWM``) is read after a warm-up put of a small file, so what the big puts
add is what they hold, not the cost of importing and connecting.
"""

import hashlib
import json
import os
import sys
import tempfile

from twisted.internet import defer, task

from stor.config import S3Config
from stor.disk.diskpool import DiskPool
from stor.s3.read import s3_client
from stor.s3.put import S3Writer


def peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


async def main(reactor: object, job: dict) -> dict:
    config = S3Config(access_key=job["access_key"], secret_key=job["secret_key"],
                      endpoint=job["endpoint"], bucket=job["bucket"], timeout=30.0)
    pool = DiskPool(reactor, size=4)
    pool.start()
    writer = S3Writer(config, s3_client(config, reactor), reactor, pool.run)
    warm = b"warm-up" * 1000
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(warm)
    await writer.put_file(hashlib.sha256(warm).hexdigest(), f.name)
    os.unlink(f.name)
    before = peak_kib()
    sizes, multipart = [], []
    for sha, path in job["files"]:
        multipart.append(os.path.getsize(path) >= writer.multipart_threshold)
        sizes.append(await writer.put_file(sha, path))
    after = peak_kib()
    pool.stop()
    return {"peak_kib_before": before, "peak_kib_after": after, "sizes": sizes,
            "multipart": multipart}


def run() -> None:
    job = json.loads(sys.argv[1])
    result: dict = {}

    async def go(reactor: object) -> None:
        result.update(await main(reactor, job))

    try:
        task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    print(json.dumps(result))


if __name__ == "__main__":
    run()
