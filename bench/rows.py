"""The measurements the rows are made of, shared by ``run.py`` and ``compare.py``.

Each ``*_measure`` function returns a callable that takes one measurement
(one side of one round) and returns a :class:`~rounds.Measure`.  Every
measurement checks what the server answered (status, and for uploads the
stored bytes) outside the timed part: a fast wrong answer is not a result.
Stored copies are deleted after each measurement so the disk holds the same
amount of data from one round to the next.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ceilings import CHUNK, durable_two_replicas, sha256_pass, timed_durable_store
from harness import (BenchError, Server, human_size, put_away, remove_quietly, s3_object_size,
                     stor_relative_path)
from load import (CpuMeter, KeepAlivePoster, RssSampler, get_discard, kib_to_mb,
                  post_concurrently, post_file, read_status_kb, run_wrk, write_wrk_script)
from rounds import Measure

SMALL_GET_SIZE = 4096
SMALL_GET_COUNT = 1000
WARMUP_SECONDS = 2
DRAIN_TIMEOUT = 120.0
DRAIN_POLL = 0.002
NO_MARKER_GRACE = 5.0

Pairs = Sequence[tuple[Path, Path]]


def sha256_path(path: Path) -> str:
    """Hash a file in 1 MiB chunks, so big files never sit in memory."""
    return sha256_pass(path)[1]


def mb_per_s(size: int, seconds: float) -> float:
    """Throughput in MB/s (10^6 bytes)."""
    return size / seconds / 1e6 if seconds > 0 else 0.0


# --------------------------------------------------------------------------
# files in stor's layout


def place(pairs: Pairs, index: int, sha: str, data: bytes) -> None:
    """Write ``data`` on both members of pair ``index % len(pairs)``, as stor stores it."""
    for storage in pairs[index % len(pairs)]:
        target = storage / stor_relative_path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def make_small_files(pairs: Pairs, webroot: Path | None,
                     count: int = SMALL_GET_COUNT) -> tuple[list[str], bytes]:
    """``count`` random 4 KiB files in stor's layout (alternating pairs), and flat in ``webroot``.

    Returns the shas and the first file's bytes (to check one answer).
    """
    if webroot is not None:
        webroot.mkdir(parents=True, exist_ok=True)
    shas, first = [], b""
    for index in range(count):
        data = os.urandom(SMALL_GET_SIZE)
        sha = hashlib.sha256(data).hexdigest()
        place(pairs, index, sha, data)
        if webroot is not None:
            (webroot / f"{sha}.dat").write_bytes(data)
        shas.append(sha)
        first = first or data
    return shas, first


def make_big_file(pair: tuple[Path, Path], size: int) -> tuple[str, list[Path]]:
    """``size`` random bytes stored on both members of ``pair``; (sha, the two paths).

    Written in 1 MiB chunks so the bench never holds the file in memory; the
    paths are fixed once the sha is known, so the chunks go to temp names first.
    """
    digest = hashlib.sha256()
    temps = [storage / "big.tmp" for storage in pair]
    handles = [temp.open("wb") for temp in temps]
    try:
        remaining = size
        while remaining:
            chunk = os.urandom(min(CHUNK, remaining))
            digest.update(chunk)
            for handle in handles:
                handle.write(chunk)
            remaining -= len(chunk)
    finally:
        for handle in handles:
            handle.close()
    sha = digest.hexdigest()
    finals = []
    for storage, temp in zip(pair, temps):
        final = storage / stor_relative_path(sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp.rename(final)
        finals.append(final)
    return sha, finals


# --------------------------------------------------------------------------
# GET


def check_get(server: Server, path: str, expected_sha: str, expected_size: int) -> None:
    """One GET, hashed: the server sends the right bytes (once, before any timing)."""
    result = get_discard(server.port, path, hash_body=True)
    if result.status != 200 or result.size != expected_size or result.sha != expected_sha:
        raise BenchError(f"{server.name}: GET {path} answered {result.status} with "
                         f"{result.size} bytes hashing to {result.sha}; expected 200, "
                         f"{expected_size} bytes, {expected_sha}\n{server.log_tail()}")


@dataclass
class WrkSettings:
    """How wrk is run: the same for every server so the ratios compare like with like."""

    wrk: str
    seconds: float
    connections: int
    threads: int
    script_dir: Path


def wrk_measure(server: Server, urls: Sequence[str], settings: WrkSettings
                ) -> Callable[[], Measure]:
    """GET req/s over ``urls`` with wrk; a warm-up run (discarded) happens now, once."""
    script = write_wrk_script(settings.script_dir / f"get-{server.port}.lua", urls)
    threads = min(settings.threads, settings.connections)
    run_wrk(settings.wrk, server.base_url, script, WARMUP_SECONDS, settings.connections, threads)

    def measure() -> Measure:
        server.check_alive()
        cpu = CpuMeter(server.pid)
        result = run_wrk(settings.wrk, server.base_url, script, settings.seconds,
                         settings.connections, threads)
        busy = cpu.percent(result.seconds)
        return Measure(result.rps, f"{server.name} p50 {result.p50_ms:.1f} ms "
                                   f"p99 {result.p99_ms:.1f} ms cpu {busy:.0f}%")

    return measure


def big_get_measure(server: Server, path: str, size: int, repeat: int
                    ) -> Callable[[], Measure]:
    """MB/s of ``repeat`` back-to-back GETs of one big file, read and discarded."""
    def measure() -> Measure:
        server.check_alive()
        seconds = 0.0
        cpu = CpuMeter(server.pid)
        for _ in range(repeat):
            result = get_discard(server.port, path)
            if result.status != 200 or result.size != size:
                raise BenchError(f"{server.name}: GET {path} answered {result.status} "
                                 f"with {result.size} of {size} bytes\n{server.log_tail()}")
            seconds += result.seconds
        return Measure(mb_per_s(size * repeat, seconds),
                       f"{server.name} cpu {cpu.percent(seconds):.0f}%")

    return measure


def big_get_ceiling(nginx: Server, path: str, file: Path, size: int, repeat: int
                    ) -> Callable[[], Measure]:
    """The slower of nginx ``sendfile`` and one core's sha256 over the same cached file."""
    nginx_measure = big_get_measure(nginx, path, size, repeat)

    def measure() -> Measure:
        served = nginx_measure().value
        hashed = mb_per_s(size * repeat, sum(sha256_pass(file)[0] for _ in range(repeat)))
        return Measure(min(served, hashed),
                       f"nginx {served:,.0f} MB/s, sha256 {hashed:,.0f} MB/s")

    return measure


# --------------------------------------------------------------------------
# POST of one file at a time


class PostSource:
    """A file to upload again and again, with a new SHA each time.

    Each :meth:`next_sha` overwrites the first 32 bytes with fresh random ones
    and hashes the file again (outside any timing), so every upload is a new
    file to stor (a 201, never a 200 duplicate) while the body stays in the
    page cache, as the ceiling assumes.
    """

    def __init__(self, path: Path, size: int) -> None:
        """Create ``size`` random bytes at ``path``."""
        self.path = path
        self.size = size
        with path.open("wb") as handle:
            remaining = size
            while remaining:
                chunk = os.urandom(min(CHUNK, remaining))
                handle.write(chunk)
                remaining -= len(chunk)

    def next_sha(self) -> str:
        """Make the file a new one and return its sha256."""
        with self.path.open("r+b") as handle:
            handle.write(os.urandom(min(32, self.size)))
        return sha256_path(self.path)


def verify_stored(result_paths: Sequence[str], size: int, sha: str) -> None:
    """stor's 201 names two distinct absolute paths holding exactly the body."""
    if len(result_paths) != 2 or len(set(result_paths)) != 2:
        raise BenchError(f"a 201 must name two paths, got {list(result_paths)}")
    for stored in map(Path, result_paths):
        if not stored.is_absolute() or not stored.exists():
            raise BenchError(f"stor answered {stored}, which is not an existing absolute path")
        if stored.stat().st_size != size or sha256_path(stored) != sha:
            raise BenchError(f"{stored} does not hold the {size} bytes hashing to {sha}")


@dataclass
class PostStats:
    """What the uploads of a row saw besides their speed."""

    rss_peak_kb: int = 0
    drains: list[float] = field(default_factory=list)


def upload_one(server: Server, source: PostSource, sha: str
               ) -> tuple[float, list[str], float]:
    """POST the source once; check the 201 and the stored bytes.

    Returns the seconds the request took, the two stored paths and the
    ``time.perf_counter()`` at which the answer had arrived.
    """
    result = post_file(server.port, sha, source.path)
    if result.status != 201:
        raise BenchError(f"{server.name} answered HTTP {result.status} to a "
                         f"{human_size(source.size)} upload (expected 201): "
                         f"{result.body[:300]!r}\n{server.log_tail()}")
    paths = result.stored_paths()
    verify_stored(paths, source.size, sha)
    return result.seconds, paths, result.finished_at


class StorUploads:
    """One side of an interleaved upload row: uploads to a stor server.

    With ``stats`` its RSS is sampled while the measurement runs;
    ``after_each`` runs after every answer, off the clock (the write-through
    row waits for the outbox there) and returns a figure kept in ``stats``.
    """

    def __init__(self, server: Server, source: PostSource, stats: PostStats | None = None,
                 after_each: Callable[[str, list[str], float], float] | None = None) -> None:
        self.server, self.source, self.stats, self.after_each = server, source, stats, after_each
        self._cpu: CpuMeter | None = None
        self._sampler: RssSampler | None = None
        self._waits: list[float] = []

    def begin(self) -> None:
        """Start counting the server's CPU (and sampling its RSS)."""
        self.server.check_alive()
        self._cpu, self._waits = CpuMeter(self.server.pid), []
        self._sampler = RssSampler(self.server.pid) if self.stats is not None else None
        if self._sampler is not None:
            self._sampler.start()

    def one(self) -> tuple[float, list[str]]:
        """One upload of a new SHA: the seconds it took and the stored paths."""
        sha = self.source.next_sha()
        took, paths, answered_at = upload_one(self.server, self.source, sha)
        if self.after_each is not None:
            self._waits.append(self.after_each(sha, paths, answered_at))
        return took, paths

    def end(self, seconds: float) -> str:
        """Stop sampling; the detail printed under the round."""
        if self._sampler is not None:
            self._sampler.stop()
            if self.stats is not None:
                self.stats.rss_peak_kb = max(self.stats.rss_peak_kb, self._sampler.peak_kb)
                self.stats.drains += self._waits
        if self.after_each is not None or self._cpu is None:
            return ""
        return f"{self.server.name} cpu {self._cpu.percent(seconds):.0f}%"


class CeilingStores:
    """One side of an interleaved upload row: the durable ceiling in this process."""

    def __init__(self, source: PostSource, storages: tuple[Path, Path]) -> None:
        self.source, self.storages = source, storages

    def begin(self) -> None:
        """Nothing to start."""

    def one(self) -> tuple[float, list[str]]:
        """One durable two-replica store of a new SHA."""
        took, finals = timed_durable_store(self.source.next_sha(), self.source.path,
                                           self.storages)
        return took, [str(f) for f in finals]

    def end(self, seconds: float) -> str:
        """No detail."""
        return ""


class UploadSide(Protocol):
    """One side of an :class:`InterleavedUploads` row."""

    def begin(self) -> None: ...

    def one(self) -> tuple[float, list[str]]: ...

    def end(self, seconds: float) -> str: ...


class KeepAliveSmallUploads:
    """One side of the 1-client small-upload row: fresh random bodies POSTed to stor
    on one keep-alive connection (:class:`~load.KeepAlivePoster`, as a client of a
    content store sends them); the detail is p50, p99 and stor's CPU per upload."""

    def __init__(self, server: Server, size: int) -> None:
        self.server, self.size = server, size
        self._poster: KeepAlivePoster | None = None
        self._cpu: CpuMeter | None = None
        self._latencies: list[float] = []

    def begin(self) -> None:
        """Start counting stor's CPU (the connection is made by the first upload, on the
        clock, and kept)."""
        self.server.check_alive()
        self._poster = KeepAlivePoster(self.server.port)
        self._cpu, self._latencies = CpuMeter(self.server.pid), []

    def one(self) -> tuple[float, list[str]]:
        """One upload of a new body (made off the clock): its seconds and stored paths."""
        assert self._poster is not None
        [(sha, body)] = random_uploads(self.size, 1)
        result = self._poster.post(sha, body)
        if result.status != 201 or len(result.stored_paths()) != 2:
            raise BenchError(f"{self.server.name} answered {result.status} to a small upload "
                             f"(expected 201 naming two paths): {result.body[:200]!r}\n"
                             f"{self.server.log_tail()}")
        self._latencies.append(result.seconds)
        return result.seconds, result.stored_paths()

    def end(self, seconds: float) -> str:
        """Close the connection; the detail printed under the round."""
        if self._poster is not None:
            self._poster.close()
        used = self._cpu.seconds() if self._cpu is not None else 0.0
        count = max(1, len(self._latencies))
        return (f"{self.server.name} {latency_note(self._latencies)} "
                f"cpu {used / count * 1000:.2f} ms/upload")


class SmallLoopStores:
    """The other side: :func:`~ceilings.durable_two_replicas` (unchanged) of a fresh
    random body, in this thread, one file at a time: the sequential loop."""

    def __init__(self, size: int, storages: tuple[Path, Path]) -> None:
        self.size, self.storages = size, storages
        self._latencies: list[float] = []
        self._cpu = 0.0

    def begin(self) -> None:
        """Nothing to start."""
        self._latencies, self._cpu = [], 0.0

    def one(self) -> tuple[float, list[str]]:
        """One durable two-replica store of a new body (made off the clock)."""
        [(sha, body)] = random_uploads(self.size, 1)
        cpu = time.process_time()
        began = time.perf_counter()
        finals = durable_two_replicas(sha, (body,), self.storages)
        took = time.perf_counter() - began
        self._cpu += time.process_time() - cpu
        self._latencies.append(took)
        return took, [str(f) for f in finals]

    def end(self, seconds: float) -> str:
        """p50, p99 and CPU per file."""
        count = max(1, len(self._latencies))
        return (f"loop {latency_note(self._latencies)} "
                f"cpu {self._cpu / count * 1000:.2f} ms/upload")


class PairedMeasure:
    """Two sides measured together, in one pass, for one round of a
    :class:`~rounds.Row`: :meth:`subject` and :meth:`reference` plug into it;
    whichever is called first measures both (:meth:`_measure`, the round's
    leader first), the other returns the result kept for it."""

    _kept: Measure | None = None

    def subject(self) -> Measure:
        """The subject's figure (measuring both sides when called first)."""
        return self._take(0)

    def reference(self) -> Measure:
        """The reference's figure (measuring both sides when called first)."""
        return self._take(1)

    def _take(self, side: int) -> Measure:
        if self._kept is not None:
            kept, self._kept = self._kept, None
            return kept
        measures = self._measure(first=side)
        self._kept = measures[1 - side]
        return measures[side]

    def _measure(self, first: int) -> tuple[Measure, Measure]:
        raise NotImplementedError


class InterleavedUploads(PairedMeasure):
    """Both sides of an upload row measured file by file, taking turns.

    This VM's disk runs in phases (about 130 MB/s, then about 400 MB/s, for
    a second or so, following the write volume of the moments before): two
    measurements of 16 files back to back can land in different phases and
    their ratio then says more about the disk than about either side.  So a
    round uploads file 1 with one side, file 1 with the other, file 2 ... (the
    side going first alternating from file to file, starting with the side
    the round puts first); each side's figure is its bytes over the sum of
    its own request times.  :meth:`subject` and :meth:`reference` plug into a
    :class:`~rounds.Row`: whichever is called first measures both, the other
    returns the result kept for it.
    """

    def __init__(self, count: int, size: int, subject: UploadSide,
                 reference: UploadSide, files_per_s: bool = False) -> None:
        """Each side's figure is MB/s, or files/s with ``files_per_s``."""
        self.count, self.size = count, size
        self.sides = (subject, reference)
        self.files_per_s = files_per_s

    def _measure(self, first: int) -> tuple[Measure, Measure]:
        os.sync()
        seconds, stored = [0.0, 0.0], []
        for side in self.sides:
            side.begin()
        try:
            for number in range(self.count):
                leader = first if number % 2 == 0 else 1 - first
                for index in (leader, 1 - leader):
                    took, paths = self.sides[index].one()
                    seconds[index] += took
                    stored += paths
        finally:
            details = [side.end(seconds[i]) for i, side in enumerate(self.sides)]
            put_away(stored, self.size)
        return (Measure(self._rate(seconds[0]), details[0]),
                Measure(self._rate(seconds[1]), details[1]))

    def _rate(self, seconds: float) -> float:
        if self.files_per_s:
            return self.count / seconds if seconds > 0 else 0.0
        return mb_per_s(self.size * self.count, seconds)


# --------------------------------------------------------------------------
# many small POSTs


def random_uploads(size: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` fresh random bodies of ``size`` bytes with their shas."""
    uploads = []
    for _ in range(count):
        body = os.urandom(size)
        uploads.append((hashlib.sha256(body).hexdigest(), body))
    return uploads


def latency_note(latencies: Sequence[float]) -> str:
    """p50 and p99 of request seconds, in ms."""
    ordered = sorted(latencies)
    if not ordered:
        return ""
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {ordered[len(ordered) // 2] * 1000:.1f} ms "
            f"p99 {p99 * 1000:.1f} ms")


@dataclass
class Chunk:
    """One side's share of a many-client small-upload round: files, wall seconds,
    each upload's latency and the CPU seconds it cost."""

    files: int
    seconds: float
    latencies: list[float]
    cpu: float


def stor_small_chunk(server: Server, size: int, count: int, clients: int
                     ) -> Callable[[], Chunk]:
    """``count`` new small files uploaded to stor by ``clients`` concurrent keep-alive
    clients (after one ``os.sync()``); CPU: every thread of stor's process."""
    def chunk() -> Chunk:
        server.check_alive()
        uploads = random_uploads(size, count)
        os.sync()
        cpu = CpuMeter(server.pid)
        seconds, results = post_concurrently(server.port, uploads, clients)
        used = cpu.seconds()
        stored = [path for result in results for path in result.stored_paths()]
        put_away(stored, size)
        bad = [r for r in results if r.status != 201]
        if bad or len(results) != count:
            sample = bad[0] if bad else None
            raise BenchError(
                f"{server.name}: {len(bad)} of {count} small uploads were not answered 201"
                + (f" (e.g. {sample.status}: {sample.body[:200]!r})" if sample else "")
                + f"\n{server.log_tail()}")
        return Chunk(count, seconds, [r.seconds for r in results], used)

    return chunk


def threads_small_chunk(size: int, count: int, threads: int, storages: tuple[Path, Path]
                        ) -> Callable[[], Chunk]:
    """``count`` new small files stored by :func:`~ceilings.durable_two_replicas`
    (unchanged) run by ``threads`` threads of this process (the same preparation as
    the stor side: fresh random bodies, one ``os.sync()``, then every thread takes
    the next file until none is left); CPU: this process."""
    def chunk() -> Chunk:
        uploads = random_uploads(size, count)
        os.sync()
        work = iter(uploads)
        lock = threading.Lock()
        stored: list[Path] = []
        latencies: list[float] = []
        errors: list[BaseException] = []
        gate = threading.Barrier(threads + 1)

        def worker() -> None:
            gate.wait()
            while True:
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                began = time.perf_counter()
                try:
                    finals = durable_two_replicas(item[0], (item[1],), storages)
                except BaseException as exc:  # reported below, not lost in a thread
                    with lock:
                        errors.append(exc)
                    return
                took = time.perf_counter() - began
                with lock:
                    stored.extend(finals)
                    latencies.append(took)

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for thread in pool:
            thread.start()
        cpu_before = time.process_time()
        gate.wait()
        started = time.perf_counter()
        for thread in pool:
            thread.join()
        seconds = time.perf_counter() - started
        used = time.process_time() - cpu_before
        put_away(stored, size)
        if errors:
            raise BenchError(f"the {threads}-thread ceiling failed: {errors[0]!r}")
        return Chunk(count, seconds, latencies, used)

    return chunk


class AlternatingChunks(PairedMeasure):
    """Both sides of a many-client small-upload row, in chunks taking turns A B B A.

    This VM's disk runs in phases of a second or so (see
    :class:`InterleavedUploads`); one side's 160 files take about half a second,
    so a round measured as one side's run, then the other's, often put the two
    in different phases (the 8 threads measured 136 and 548 files/s in two
    rounds of one run).  A round is therefore :attr:`chunks` chunks a side in
    the order A B B A A B B A (A: the side the round puts first); each side's
    figure is its files over the sum of its chunks' seconds, its detail p50,
    p99 and CPU per upload over all of them.
    """

    def __init__(self, chunks: int, subject: Callable[[], Chunk], reference: Callable[[], Chunk],
                 names: tuple[str, str]) -> None:
        self.chunks = chunks
        self.sides = (subject, reference)
        self.names = names

    def _measure(self, first: int) -> tuple[Measure, Measure]:
        done: tuple[list[Chunk], list[Chunk]] = ([], [])
        for slot in range(2 * self.chunks):
            side = first if slot % 4 in (0, 3) else 1 - first
            done[side].append(self.sides[side]())
        measures = []
        for name, chunks in zip(self.names, done):
            files = sum(c.files for c in chunks)
            seconds = sum(c.seconds for c in chunks)
            latencies = [lat for c in chunks for lat in c.latencies]
            cpu = sum(c.cpu for c in chunks)
            measures.append(Measure(files / seconds if seconds > 0 else 0.0,
                                    f"{name} {latency_note(latencies)} "
                                    f"cpu {cpu / max(1, files) * 1000:.2f} ms/upload"))
        return measures[0], measures[1]


def small_ceiling_measure(size: int, count: int, storages: tuple[Path, Path]
                          ) -> Callable[[], Measure]:
    """files/s of the durable two-replica protocol for ``count`` small files, one Python loop."""
    def measure() -> Measure:
        uploads = random_uploads(size, count)
        os.sync()
        stored: list[Path] = []
        latencies: list[float] = []
        cpu_before = time.process_time()
        started = time.perf_counter()
        try:
            for sha, body in uploads:
                began = time.perf_counter()
                stored += durable_two_replicas(sha, (body,), storages)
                latencies.append(time.perf_counter() - began)
            seconds = time.perf_counter() - started
            used = time.process_time() - cpu_before
        finally:
            put_away(stored, size)
        return Measure(count / seconds, f"loop {latency_note(latencies)} "
                                        f"cpu {used / count * 1000:.2f} ms/upload")

    return measure


# --------------------------------------------------------------------------
# S3 write-through


def outbox_drain_waiter(moto: Server, bucket: str, size: int
                        ) -> Callable[[str, list[str], float], float]:
    """Wait until a stored file has left the outbox; return seconds since its 201.

    Drained means: the outbox marker ``<storage>/.stor-outbox/<sha>`` is gone
    from both storages of the pair *and* the bucket answers HEAD on the key
    ``aa/bb/cc/<sha>`` with the file's size.  Each upload waits for its own
    drain before the next one starts, so moto (which runs on this machine; a
    real S3 would not) does not take the CPU from the next measured POST.
    """
    def wait(sha: str, paths: list[str], answered_at: float) -> float:
        markers = [Path(path).parents[3] / ".stor-outbox" / sha.lower() for path in paths]
        key = f"{sha[0:2]}/{sha[2:4]}/{sha[4:6]}/{sha}".lower()
        deadline = answered_at + DRAIN_TIMEOUT
        if not any(marker.exists() for marker in markers):
            # Drained already, or never recorded: the bucket tells which, quickly.
            deadline = min(deadline, time.perf_counter() + NO_MARKER_GRACE)
        while any(marker.exists() for marker in markers):
            if time.perf_counter() > deadline:
                raise BenchError(f"the outbox kept {sha} for {DRAIN_TIMEOUT:.0f}s")
            time.sleep(DRAIN_POLL)
        while s3_object_size(moto, bucket, key) != size:
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"{key} is not in the bucket {time.perf_counter() - answered_at:.0f}s after "
                    "the 201 and no outbox marker is left: is the write-through wired in "
                    "this build?")
            time.sleep(DRAIN_POLL * 5)
        return time.perf_counter() - answered_at

    return wait


# --------------------------------------------------------------------------
# memory


def rss_upload(server: Server, source: PostSource) -> tuple[float, int, int]:
    """Upload ``source`` once to a fresh stor: (seconds, sampled peak kB, VmHWM kB)."""
    sha = source.next_sha()
    os.sync()
    sampler = RssSampler(server.pid)
    sampler.start()
    try:
        result = post_file(server.port, sha, source.path)
    finally:
        sampler.stop()
    hwm = read_status_kb(server.pid, "VmHWM") or 0
    if result.status != 201:
        raise BenchError(f"{server.name} answered HTTP {result.status} to the "
                         f"{human_size(source.size)} upload: {result.body[:300]!r}\n"
                         f"{server.log_tail()}")
    paths = result.stored_paths()
    try:
        verify_stored(paths, source.size, sha)
    finally:
        remove_quietly(paths)
    return result.seconds, sampler.peak_kb, hwm


def fmt_mb(kib: int) -> str:
    """kB from /proc as decimal MB."""
    return f"{kib_to_mb(kib):,.0f} MB"
