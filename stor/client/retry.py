"""Another attempt after a failure that may pass: exponential backoff with jitter.

A failure counts against ``--retries`` only when the attempt made no progress:
a download whose connection keeps dropping still finishes as long as every
attempt brings more bytes (it resumes with ``Range``), while a server that
answers 503 forever is given up on after ``retries`` more attempts.
"""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet.task import deferLater

from stor.client.errors import ItemFailed
from stor.client.settings import Backoff
from stor.core.reactor import Reactor

T = TypeVar("T")


async def with_retries(reactor: Reactor, backoff: Backoff, attempt: Callable[[], Awaitable[T]],
                       progress: Callable[[], int] = lambda: 0) -> T:
    """Run ``attempt`` until it succeeds, fails for good, or uses up the retries.

    ``progress`` measures the work done so far (bytes on disk); an attempt that
    failed after increasing it resets the count of failures in a row.
    """
    failures = 0
    while True:
        before = progress()
        try:
            return await attempt()
        except ItemFailed as e:
            if not e.retryable:
                raise
            failures = 1 if progress() > before else failures + 1
            if failures > backoff.retries:
                raise
            await deferLater(reactor, backoff.delay(failures, e.retry_after))
