"""Pure rules for where to look for a file and where to put a new one (docs/SPEC.md §2).

No I/O here: callers pass free-space figures and a random generator, so the
rules can be tested exhaustively without disks or a reactor.
"""

import random
import re
from collections.abc import Iterable, Sequence

from stor.core.errors import NoSpace

Pair = tuple[str, str]

BALANCE_THRESHOLD = 1_000_000_000
"""Below this many free bytes on every pair, fill the emptiest pair first."""


def lookup_order(pairs: Sequence[Pair], rng: random.Random) -> list[str]:
    """Storages in the order a lookup tries them.

    Shuffle the pairs; pick one member of each at random as its "first"; try
    every first member in shuffled pair order, then every second member.  First
    reads therefore spread over both members of every pair.
    """
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    firsts, seconds = [], []
    for a, b in shuffled:
        if rng.random() < 0.5:
            a, b = b, a
        firsts.append(a)
        seconds.append(b)
    return firsts + seconds


def writable(storage: str, pattern: re.Pattern[str]) -> bool:
    """Whether ``storage`` may receive new files (``writable_pairs_regex``)."""
    return pattern.search(storage) is not None


def pair_room(free: tuple[int, int], size: int) -> int:
    """Bytes left on a pair after storing ``size`` bytes on both members."""
    return min(free) - size


def choose_pair(
    candidates: Iterable[tuple[Pair, tuple[int, int]]],
    size: int,
    rng: random.Random,
    threshold: int = BALANCE_THRESHOLD,
) -> Pair:
    """Choose the pair for a new file of ``size`` bytes.

    ``candidates`` are pairs with the free bytes of each member (0 for a member
    that is not writable).  No pair with room left → :class:`NoSpace`; no pair
    above ``threshold`` → the roomiest; otherwise a random pair weighted by room.
    """
    rooms = [(pair, pair_room(free, size)) for pair, free in candidates]
    fitting = [(pair, room) for pair, room in rooms if room > 0]
    if not fitting:
        raise NoSpace(f"no writable pair has room for {size} bytes")
    if all(room <= threshold for _, room in fitting):
        return max(fitting, key=lambda item: item[1])[0]
    pairs = [pair for pair, _ in fitting]
    weights = [room for _, room in fitting]
    return rng.choices(pairs, weights=weights, k=1)[0]
