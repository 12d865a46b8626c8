"""What the commands are told by the command line: the server, credentials, limits, retries.

Plain data with no Twisted import, so ``stor --help`` and usage errors stay quick.
"""

import random
from dataclasses import dataclass, field

DEFAULT_STORAGE = "http://127.0.0.1:8080"


@dataclass(frozen=True)
class Backoff:
    """``retries`` more attempts, waiting ``base * 2**(n-1)`` seconds (at most ``cap``) before the n-th.

    The wait is "equal jitter": half of it fixed, half random, so clients that
    failed together (a restarted server) do not come back together, yet the
    wait still grows with every failure.
    """

    retries: int = 5
    base: float = 0.5
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the attempt that follows ``failures`` failures in a row."""
        ceiling = min(self.cap, self.base * 2 ** (failures - 1))
        wait = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        if retry_after is not None:  # the server's own Retry-After, within reason
            wait = max(wait, min(retry_after, self.cap))
        return wait


@dataclass(frozen=True)
class Settings:
    """What every command needs to reach the server (built by ``stor.cli.client``)."""

    storage: str = DEFAULT_STORAGE
    """Base URL, no trailing slash, no credentials."""
    auth: tuple[str, str] | None = None
    parallel: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    timeout: float = 60.0
    """Seconds to connect, to get an answer, and without a byte moving on a transfer."""

    def url(self, sha: str) -> str:
        return f"{self.storage}/{sha}"
