"""experiments/threads.py: the cores other processes keep busy, from hand-made /proc/stat snapshots, and the thread
count that follows from them."""

import pytest

from experiments.threads import ThreadShare


def share(cores: int = 2) -> tuple[ThreadShare, list[int]]:
    counts: list[int] = []
    return ThreadShare(counts.append, interval=5.0, cores=cores), counts


@pytest.mark.parametrize(
    ("busy", "own", "others"),
    [
        (20.0, 10.0, 1.0),  # 10 s of a 2-core machine (20 CPU-s): 20 busy, 10 ours -> others kept one core busy
        (20.0, 20.0, 0.0),  # all of it ours
        (5.0, 0.0, 0.5),  # a neighbour at half a core
        (4.0, 6.0, 0.0),  # more own time than the machine saw busy (rounding of ticks): never negative
    ],
)
def test_others_busy_by_hand(busy, own, others):
    threads, _ = share()
    before, after = (100.0, 1000.0, 4000.0, 50.0), (110.0, 1000.0 + busy, 4020.0, 50.0 + own)
    assert threads.others_busy(before, after) == pytest.approx(others)


@pytest.mark.parametrize(
    ("others", "cores", "expected"), [(0.0, 2, 2), (1.0, 2, 1), (3.0, 2, 1), (0.4, 2, 2), (0.6, 2, 1), (2.2, 8, 6)]
)
def test_threads_for_the_cores_left_free(others, cores, expected):
    threads, _ = share(cores)
    assert threads.choose(others) == expected


def test_rebalance_looks_only_every_interval_and_sets_only_changes():
    threads, counts = share()
    threads.rebalance(force=True)
    first = threads.threads
    assert counts == [first] and 1 <= first <= 2
    for _ in range(100):
        assert threads.rebalance() == first  # within the interval: no look, no call
    assert counts == [first]
