"""Write readiness (docs/SPEC.md §9, docs/fleet-operations.rst): may a balancer
send this host uploads?

A host is *write-ready* while some pair that ``writable_pairs_regex`` lets take
files has both members usable and more than ``write_headroom`` bytes free on
each.  A balancer that routes uploads by this check takes a filling host out
of the write path *before* it has to refuse a file (507, which no balancer can
retry), while the host keeps serving reads.  The headroom covers the largest
upload the fleet takes plus those in flight while the check catches up.
"""

from collections.abc import Callable, Sequence

from stor.core.placement import Pair
from stor.disk.health import ON_ROOT, StorageHealth


def write_blockers(pairs: Sequence[Pair], writable: Callable[[str], bool],
                   health: Sequence[StorageHealth], headroom: int) -> list[str]:
    """Why this host should get no uploads now; empty when it is write-ready."""
    seen = {h.path: h for h in health}
    reasons: list[str] = []
    for pair in pairs:
        if not (writable(pair[0]) and writable(pair[1])):
            continue
        why = [_blocker(seen.get(s), s, headroom) for s in pair]
        if not any(why):
            return []
        reasons += [w for w in why if w]
    return reasons or ["no pair is writable (writable_pairs_regex)"]


def _blocker(h: StorageHealth | None, storage: str, headroom: int) -> str | None:
    if h is None:
        return f"{storage}: not checked"
    if not h.placeable or (h.problem is not None and h.problem != ON_ROOT):
        return f"{storage}: {h.problem or 'takes no files'}"
    if h.free_bytes is None:
        return f"{storage}: free space unknown"
    if h.free_bytes <= headroom:
        return (f"{storage}: {h.free_bytes} bytes free, not more than write_headroom "
                f"({headroom})")
    return None
