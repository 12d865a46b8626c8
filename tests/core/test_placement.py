"""Where to look and where to write (docs/SPEC.md §2): pure rules, no disks, no reactor.

Statistical tests use a fixed seed, so they are deterministic; their bounds are
five binomial standard deviations, so a correct rule passes for any seed with
overwhelming probability and a wrong one (e.g. a constant choice, a weighting
by the larger member) falls far outside them.
"""

import math
import random
import re
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stor.core import placement
from stor.core.errors import NoSpace
from stor.core.placement import choose_pair, lookup_order, writable
from stor.disk.health import StorageHealth
from stor.disk.local import LocalStore

GB = 1_000_000_000


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether ``count`` successes in ``n`` draws is plausible for probability ``p``."""
    sd = math.sqrt(n * p * (1 - p))
    return abs(count - n * p) <= sigmas * sd


# ---------------------------------------------------------------- lookup order

pair_lists = st.lists(st.text(min_size=1), min_size=2, max_size=24, unique=True).map(
    lambda names: [(names[i], names[i + 1]) for i in range(0, len(names) - 1, 2)]
)


@given(pair_lists, st.integers(min_value=0, max_value=2**32))
def test_lookup_order_firsts_then_their_twins(pairs: list[tuple[str, str]], seed: int) -> None:
    order = lookup_order(pairs, random.Random(seed))
    n = len(pairs)
    every = [s for pair in pairs for s in pair]
    assert sorted(order) == sorted(every)  # a permutation of all storages
    firsts, seconds = order[:n], order[n:]
    twin = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    # the first half holds exactly one member of every pair ...
    assert {frozenset((s, twin[s])) for s in firsts} == {frozenset(p) for p in pairs}
    # ... and the second half their twins, in the same pair order
    assert seconds == [twin[s] for s in firsts]


def test_lookup_order_of_one_pair() -> None:
    seen = {tuple(lookup_order([("a", "b")], random.Random(seed))) for seed in range(50)}
    assert seen == {("a", "b"), ("b", "a")}


def test_lookup_order_spreads_first_reads() -> None:
    pairs = [("a1", "a2"), ("b1", "b2"), ("c1", "c2")]
    rng = random.Random(20240601)
    draws = 4000
    first_pair: Counter[int] = Counter()
    member0_first: Counter[int] = Counter()
    first_storage: Counter[str] = Counter()
    for _ in range(draws):
        order = lookup_order(pairs, rng)
        first_storage[order[0]] += 1
        for i, pair in enumerate(pairs):
            if pair[0] in order[: len(pairs)]:
                member0_first[i] += 1
            if order[0] in pair:
                first_pair[i] += 1
    for i in range(len(pairs)):
        # each member of a pair is tried before its twin about half the time
        assert within(member0_first[i], draws, 0.5), (i, member0_first[i])
        # each pair is tried first about 1/n of the time
        assert within(first_pair[i], draws, 1 / len(pairs)), (i, first_pair[i])
    # so every storage takes about 1/(2n) of the first reads
    for s in (s for pair in pairs for s in pair):
        assert within(first_storage[s], draws, 1 / (2 * len(pairs))), (s, first_storage[s])


def test_lookup_order_shuffles_pair_positions_uniformly() -> None:
    pairs = [("a1", "a2"), ("b1", "b2"), ("c1", "c2"), ("d1", "d2")]
    rng = random.Random(7)
    draws = 4000
    position: Counter[tuple[int, int]] = Counter()
    for _ in range(draws):
        order = lookup_order(pairs, rng)
        for pos, storage in enumerate(order[: len(pairs)]):
            position[(next(i for i, p in enumerate(pairs) if storage in p), pos)] += 1
    for i in range(len(pairs)):
        for pos in range(len(pairs)):
            assert within(position[(i, pos)], draws, 1 / len(pairs)), (i, pos, position[(i, pos)])


# ----------------------------------------------------------------- choose pair

A, B, C, D = ("a1", "a2"), ("b1", "b2"), ("c1", "c2"), ("d1", "d2")


@pytest.mark.parametrize(
    "candidates, size",
    [
        pytest.param([], 1, id="no-pairs"),
        pytest.param([(A, (100, 100))], 100, id="size-equals-free"),
        pytest.param([(A, (100, 100))], 101, id="size-above-free"),
        pytest.param([(A, (100, 10 * GB))], 100, id="smaller-member-decides"),
        pytest.param([(A, (0, 0)), (B, (50, 50))], 50, id="every-pair-at-zero"),
        pytest.param([(A, (0, 10 * GB))], 1, id="non-writable-member-counts-0"),
        pytest.param([(A, (0, 10 * GB)), (B, (10 * GB, 0))], 1, id="each-pair-has-a-non-writable"),
    ],
)
def test_nothing_fits_is_no_space(candidates, size: int) -> None:
    with pytest.raises(NoSpace):
        choose_pair(candidates, size, random.Random(1))


def test_non_writable_member_makes_its_pair_unusable() -> None:
    candidates = [(A, (0, 10 * GB)), (B, (500, 500))]
    chosen = {choose_pair(candidates, 10, random.Random(seed)) for seed in range(200)}
    assert chosen == {B}


def test_below_threshold_the_roomiest_pair_wins() -> None:
    # room = min(member free) - size: A 400, B 500, C 300
    candidates = [(A, (500, 900)), (B, (600, 600)), (C, (10_000_000, 400))]
    chosen = {choose_pair(candidates, 100, random.Random(seed)) for seed in range(200)}
    assert chosen == {B}


def test_room_is_the_smaller_member_not_the_sum_or_larger() -> None:
    candidates = [(A, (100, 900_000_000)), (B, (500, 500))]
    chosen = {choose_pair(candidates, 10, random.Random(seed)) for seed in range(200)}
    assert chosen == {B}


def test_size_is_subtracted_before_the_threshold() -> None:
    # both pairs have more than 1 GB free, but after this file neither is above it
    size = 10
    candidates = [(A, (GB + size, GB + size)), (B, (GB + size - 1, 5 * GB))]
    chosen = {choose_pair(candidates, size, random.Random(seed)) for seed in range(200)}
    assert chosen == {A}


def test_threshold_is_one_gigabyte_in_bytes() -> None:
    # rooms exactly at the threshold are not above it: the roomiest pair always wins
    at = [(A, (GB, GB)), (B, (GB - 1, GB - 1))]
    assert {choose_pair(at, 0, random.Random(s)) for s in range(200)} == {A}
    # one byte more and balancing starts: both pairs get files
    above = [(A, (GB + 1, GB + 1)), (B, (GB, GB))]
    assert {choose_pair(above, 0, random.Random(s)) for s in range(200)} == {A, B}
    assert placement.BALANCE_THRESHOLD == GB


def test_above_threshold_choice_is_proportional_to_room() -> None:
    size = 1_000_000
    rooms = {A: 2 * GB, B: 3 * GB, C: 5 * GB, D: GB // 2}
    candidates = [(p, (room + size, room + size + 7 * GB)) for p, room in rooms.items()]
    candidates.append((("z1", "z2"), (size, 50 * GB)))  # room 0: never
    candidates.append((("y1", "y2"), (0, 50 * GB)))  # non-writable member: never
    total = sum(rooms.values())
    rng = random.Random(99)
    draws = 10_000
    counts = Counter(choose_pair(candidates, size, rng) for _ in range(draws))
    assert set(counts) <= set(rooms)
    for pair, room in rooms.items():
        assert within(counts[pair], draws, room / total), (pair, counts[pair], room / total)


@given(
    st.lists(st.tuples(st.integers(0, 20 * GB), st.integers(0, 20 * GB)), min_size=1, max_size=8),
    st.integers(0, 2 * GB),
    st.integers(0, 2**32),
)
def test_chosen_pair_always_has_room(frees, size: int, seed: int) -> None:
    pairs = [(f"s{2 * i}", f"s{2 * i + 1}") for i in range(len(frees))]
    candidates = list(zip(pairs, frees))
    room = {p: min(f) - size for p, f in candidates}
    if all(r <= 0 for r in room.values()):
        with pytest.raises(NoSpace):
            choose_pair(candidates, size, random.Random(seed))
        return
    chosen = choose_pair(candidates, size, random.Random(seed))
    assert room[chosen] > 0
    if all(r <= GB for r in room.values()):
        assert room[chosen] == max(room.values())


# -------------------------------------------------------------------- writable

@pytest.mark.parametrize(
    "pattern, storage, expected",
    [
        ("data[12]", "/mnt/data1", True),
        ("data[12]", "/mnt/data2", True),
        ("data[12]", "/mnt/data3", False),
        ("data[12]", "/mnt/data4", False),
        ("^data", "/mnt/data1", False),  # search, anchored only when the regex says so
        ("^/mnt/", "/mnt/data1", True),
        ("data1$", "/mnt/data1", True),
        ("data1$", "/mnt/data10", False),
        (".*", "/anything", True),
        ("", "/anything", True),
    ],
)
def test_writable_uses_re_search(pattern: str, storage: str, expected: bool) -> None:
    assert writable(storage, re.compile(pattern)) is expected


# ------------------------------------------------- LocalStore.choose_pair (no disk)

PAIRS = [("/mnt/data1", "/mnt/data2"), ("/mnt/data3", "/mnt/data4")]


def store(regex: str = ".*", free: dict[str, int] | None = None, seed: int = 1,
          unplaceable: frozenset[str] = frozenset()) -> LocalStore:
    frees = free or {s: 5 * GB for pair in PAIRS for s in pair}

    def health(storages, check_mounts, with_free):  # what the disks would say
        return [StorageHealth(s, None, s not in unplaceable, frees[s]) for s in storages]

    return LocalStore(
        PAIRS,
        pool=None,  # type: ignore[arg-type]  # choose_pair_blocking is called directly, no pool
        writable_regex=re.compile(regex),
        rng=random.Random(seed),
        health=health,
    )


def test_store_honours_writable_regex() -> None:
    s = store("data[12]")
    assert {s.choose_pair_blocking(1000) for _ in range(200)} == {PAIRS[0]}
    s = store("data[34]")
    assert {s.choose_pair_blocking(1000) for _ in range(200)} == {PAIRS[1]}


def test_store_pair_needs_both_members_writable() -> None:
    # data1 and data3 match, their twins do not: no pair may be written
    with pytest.raises(NoSpace):
        store("data[13]").choose_pair_blocking(1)


def test_store_balances_over_all_writable_pairs() -> None:
    s = store()
    assert {s.choose_pair_blocking(1000) for _ in range(200)} == set(PAIRS)


def test_store_never_places_on_an_unhealthy_member() -> None:
    s = store(unplaceable=frozenset({"/mnt/data2"}))  # e.g. a disk that did not mount
    assert {s.choose_pair_blocking(1000) for _ in range(100)} == {PAIRS[1]}


def test_store_uses_injected_free_space() -> None:
    free = {"/mnt/data1": 900, "/mnt/data2": 2000, "/mnt/data3": 1000, "/mnt/data4": 1000}
    s = store(free=free)
    assert {s.choose_pair_blocking(100) for _ in range(50)} == {PAIRS[1]}
    with pytest.raises(NoSpace):
        s.choose_pair_blocking(1000)


def test_store_exclude() -> None:
    s = store()
    assert {s.choose_pair_blocking(1000, exclude=[PAIRS[0]]) for _ in range(100)} == {PAIRS[1]}
    assert {s.choose_pair_blocking(1000, exclude=[PAIRS[1]]) for _ in range(100)} == {PAIRS[0]}
    with pytest.raises(NoSpace):
        s.choose_pair_blocking(1000, exclude=PAIRS)


def test_store_exclude_with_regex() -> None:
    with pytest.raises(NoSpace):
        store("data[12]").choose_pair_blocking(1000, exclude=[PAIRS[0]])
