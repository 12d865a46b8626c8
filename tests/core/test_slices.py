"""The shared verified slice producer (stor.core.slices) on its own: a source whose reads
the test completes by hand, a consumer that pauses it the way a full send buffer does."""

import hashlib

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from stor.core.slices import VerifiedSlice

DATA = bytes(range(256)) * 40  # 10240 bytes
CHUNK = 1024


class Corrupt(Exception):
    pass


class Short(Exception):
    pass


class Source:
    """``data`` from the page cache (``cached``) or from reads the test completes."""

    def __init__(self, data: bytes = DATA, cached: bool = False) -> None:
        self.data = data
        self.cached = cached
        self.pending: list[tuple[Deferred[bytes], int, int]] = []
        self.reads: list[int] = []
        self.closed = 0

    def read_nowait(self, offset: int, size: int) -> bytes | None:
        if not self.cached:
            return None
        self.reads.append(offset)
        return self.data[offset:offset + size]

    def read(self, offset: int, size: int) -> "Deferred[bytes]":
        assert not self.pending, "one read at a time"
        assert self.closed == 0, "no read after close"
        self.reads.append(offset)
        d: Deferred[bytes] = Deferred()
        self.pending.append((d, offset, size))
        return d

    def finish_read(self) -> None:
        d, offset, size = self.pending.pop()
        d.callback(self.data[offset:offset + size])

    def fail_read(self, error: Exception) -> None:
        self.pending.pop()[0].errback(error)

    def ended_early(self, offset: int) -> BaseException:
        return Short(offset)

    def corrupt(self, actual: str) -> BaseException:
        return Corrupt(actual)

    def close(self) -> None:
        self.closed += 1


class Consumer:
    """Records writes; with ``pause_after`` it pauses its producer on every write, as a
    transport does when a write fills its buffer."""

    def __init__(self, pause_after: bool = False) -> None:
        self.written = bytearray()
        self.writes = 0
        self.producer: VerifiedSlice | None = None
        self.registered = False
        self.pause_after = pause_after

    def registerProducer(self, producer: VerifiedSlice, streaming: bool) -> None:
        assert streaming
        self.producer, self.registered = producer, True

    def unregisterProducer(self) -> None:
        self.registered = False

    def write(self, data: bytes) -> None:
        self.written += data
        self.writes += 1
        if self.pause_after and self.producer is not None:
            self.producer.pauseProducing()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def outcome(d: Deferred) -> object:
    """What ``d`` fired with (a Failure for an error), or ``...`` if it has not fired."""
    result: list[object] = []
    d.addBoth(result.append)
    return result[0] if result else ...


def run_threads(source: Source, limit: int = 100) -> None:
    for _ in range(limit):
        if not source.pending:
            return
        source.finish_read()


def test_a_whole_slice_reaches_the_consumer_and_the_source_is_closed_once() -> None:
    source, consumer = Source(), Consumer()
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK, expected=sha(DATA))
    d = body.startProducing(consumer)
    run_threads(source)
    assert outcome(d) is None
    assert bytes(consumer.written) == DATA and source.closed == 1 and body.failure is None


def test_an_offset_slice_sends_exactly_its_bytes() -> None:
    source, consumer = Source(cached=True), Consumer()
    want = DATA[1000:1000 + 3333]
    d = VerifiedSlice(source, 1000, 3333, chunk=CHUNK, expected=sha(want)).startProducing(consumer)
    assert outcome(d) is None and bytes(consumer.written) == want


def test_a_paused_consumer_gets_nothing_more_and_no_read_starts_until_it_resumes() -> None:
    source, consumer = Source(), Consumer(pause_after=True)
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK)
    consumer.producer = body
    d = body.startProducing(consumer)
    source.finish_read()
    assert consumer.writes == 1 and not source.pending  # paused by that write: no next read
    body.resumeProducing()
    assert len(source.pending) == 1 and consumer.writes == 1
    source.finish_read()
    assert consumer.writes == 2
    for _ in range(8):
        body.resumeProducing()
        source.finish_read()
    assert outcome(d) is None and bytes(consumer.written) == DATA


def test_a_chunk_read_while_paused_waits_for_the_resume() -> None:
    source, consumer = Source(), Consumer()
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK)
    body.startProducing(consumer)
    body.pauseProducing()  # the buffer filled while the first read ran
    source.finish_read()
    assert consumer.writes == 0
    body.resumeProducing()
    assert consumer.writes == 1


def test_read_ahead_reads_the_next_chunk_while_the_last_is_on_the_wire() -> None:
    source, consumer = Source(), Consumer(pause_after=True)
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK, read_ahead=True)
    consumer.producer = body
    d = body.startProducing(consumer)
    source.finish_read()
    assert consumer.writes == 1 and source.reads == [0, CHUNK]  # the next read runs, paused
    source.finish_read()
    assert consumer.writes == 1 and not source.pending  # held: one chunk ahead, no more
    body.resumeProducing()
    assert consumer.writes == 2 and source.reads[-1] == 2 * CHUNK
    while outcome(d) is ...:
        run_threads(source)
        body.resumeProducing()
    assert bytes(consumer.written) == DATA


def test_cached_chunks_are_sent_without_a_thread() -> None:
    source, consumer = Source(cached=True), Consumer()
    d = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK).startProducing(consumer)
    assert outcome(d) is None and bytes(consumer.written) == DATA and not source.pending


@pytest.mark.parametrize("cached", [False, True])
def test_a_wrong_digest_holds_back_the_last_chunk_and_fails(cached: bool) -> None:
    rotten = DATA[:-1] + b"\x00"
    source, consumer = Source(rotten, cached=cached), Consumer()
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK, expected=sha(DATA))
    d = body.startProducing(consumer)
    run_threads(source)
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(Corrupt)
    assert str(result.value) == sha(rotten)
    assert bytes(consumer.written) == rotten[:-CHUNK]  # never the whole wrong file
    assert isinstance(body.failure, Corrupt) and source.closed == 1


def test_a_source_that_ends_early_fails_the_slice_short() -> None:
    source, consumer = Source(DATA[:5000]), Consumer()
    d = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK).startProducing(consumer)
    run_threads(source)
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(Short) and result.value.args == (5000,)
    assert len(consumer.written) == 5000 and source.closed == 1


def test_a_failed_read_fails_the_slice_with_its_error() -> None:
    source, consumer = Source(), Consumer()
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK)
    d = body.startProducing(consumer)
    source.finish_read()
    source.fail_read(OSError(5, "Input/output error"))
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(OSError)
    assert isinstance(body.failure, OSError) and source.closed == 1


def test_a_body_producer_stopped_mid_read_never_fires_and_closes_after_the_read() -> None:
    source, consumer = Source(), Consumer()
    body = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK)
    d = body.startProducing(consumer)
    body.stopProducing()  # the request was aborted while a thread reads
    assert source.closed == 0  # the read still uses the file
    source.finish_read()
    assert source.closed == 1 and consumer.writes == 0
    assert outcome(d) is ...  # IBodyProducer: never fires after stopProducing


def test_write_to_registers_reports_a_stop_and_unregisters_at_the_end() -> None:
    source, consumer = Source(cached=True), Consumer()
    d = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK).write_to(consumer)
    assert outcome(d) is None and not consumer.registered

    source, consumer = Source(), Consumer()
    d = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK).write_to(consumer)
    assert consumer.registered
    assert consumer.producer is not None
    consumer.producer.stopProducing()  # the client went away
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(CancelledError)
    source.finish_read()
    assert source.closed == 1 and consumer.writes == 0


def test_cancelling_a_download_stops_it() -> None:
    source, consumer = Source(), Consumer()
    d = VerifiedSlice(source, 0, len(DATA), chunk=CHUNK).write_to(consumer)
    d.cancel()
    source.finish_read()
    assert consumer.writes == 0 and source.closed == 1
    result = outcome(d)
    assert isinstance(result, Failure) and result.check(CancelledError)


@pytest.mark.parametrize("expected, ok", [(sha(b""), True), (sha(b"x"), False), (None, True)])
def test_an_empty_slice_fires_at_once_and_still_checks_its_hash(expected: str | None,
                                                                 ok: bool) -> None:
    source, consumer = Source(b""), Consumer()
    d = VerifiedSlice(source, 0, 0, chunk=CHUNK, expected=expected).startProducing(consumer)
    result = outcome(d)
    assert (result is None) == ok and consumer.writes == 0 and source.closed == 1
    if not ok:
        assert isinstance(result, Failure) and result.check(Corrupt)


def test_on_chunk_counts_every_byte_handed_over() -> None:
    seen: list[int] = []
    source, consumer = Source(cached=True), Consumer()
    VerifiedSlice(source, 0, len(DATA), chunk=CHUNK, on_chunk=seen.append).startProducing(consumer)
    assert sum(seen) == len(DATA) and len(seen) == len(DATA) // CHUNK
