"""Sharing a busy machine: as many torch threads as there are free cores.

With torch's defaults a run takes one thread per core, and OpenMP's threads wait for each other at the end of every
parallel region. On a 2-core machine beside one CPU-bound neighbour, every region then waits for a thread that the
neighbour holds off its core: the default task's training step ran at 0.23 of its speed alone, and beside three
neighbours at 0.08 (benchmarks/contention.py, docs/performance.md). One thread has no one to wait for. So a command
takes as many threads as the cores the other processes leave free, counted again at every `rebalance` (a loop calls
it often; it looks at the machine every `interval` seconds). `run.threads` fixes the count instead.

OpenMP's passive wait policy (threads sleep at once when they wait) was measured too and dropped: alone, it made
the world model's small matrix products 2.4x slower at 2 threads.
"""

import os
import time


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _machine_busy_seconds() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (total - idle) / ticks, total / ticks


def _own_seconds() -> float:
    """CPU seconds this process (all its threads) has used."""
    times = os.times()
    return times.user + times.system


class ThreadShare:
    """Chooses the torch thread count from the cores other processes leave free.

    Args:
        set_threads: called with the new count when it changes (torch.set_num_threads).
        interval: seconds between looks at the machine; `rebalance` between looks does nothing.
    """

    def __init__(self, set_threads, interval: float = 5.0, cores: int | None = None):
        self.set_threads, self.interval = set_threads, interval
        self.cores = cores or usable_cores()
        self.threads = 0
        self.last = self._snapshot()

    def _snapshot(self) -> tuple[float, float, float, float] | None:
        machine = _machine_busy_seconds()
        return None if machine is None else (time.monotonic(), *machine, _own_seconds())

    def others_busy(self, before, after) -> float:
        """Cores the other processes kept busy between two snapshots."""
        _, busy0, total0, own0 = before
        _, busy1, total1, own1 = after
        if total1 <= total0:
            return 0.0
        machine_cores = (total1 - total0) / max(after[0] - before[0], 1e-9)  # all of the machine's cores
        return max((busy1 - busy0) - (own1 - own0), 0.0) / (total1 - total0) * machine_cores

    def choose(self, others_busy: float) -> int:
        """Threads for the cores left free (at least one)."""
        return max(1, min(self.cores, round(self.cores - others_busy)))

    def start(self, sample: float = 0.2) -> int:
        """Look at the machine for `sample` seconds and set the first count."""
        time.sleep(sample)
        return self.rebalance(force=True)

    def rebalance(self, force: bool = False) -> int:
        """Set the count anew if `interval` seconds have passed since the last look; returns the count in force."""
        if not force and self.last is not None and time.monotonic() - self.last[0] < self.interval:
            return self.threads
        now = self._snapshot()
        if self.last is None or now is None:
            threads = self.cores
        else:
            threads = self.choose(self.others_busy(self.last, now))
            self.last = now
        if threads != self.threads:
            self.threads = threads
            self.set_threads(threads)
        return threads
