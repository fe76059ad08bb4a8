"""How many threads a stage computes with on a CPU that others may share: one rule, re-checked every step.

Two OpenMP threads on two cores wait for each other at every parallel region's barrier. When another process
of the same priority takes a core, the thread that shares it is descheduled for whole scheduler slices and
every barrier waits for it: measured 2.6x slower per PPO step, where one thread on the free core is 1.3x
(benchmarks/shared_cpu.py). So the thread count follows the cores the other processes leave free, measured
over the last step. Niced processes (``nice -n 19`` test jobs) do not count: the scheduler gives them only the
time we leave, so both threads keep their cores (measured 1.05x). libgomp's wait policy stays its default:
``OMP_WAIT_POLICY=PASSIVE`` made the step 30% slower on an idle machine.

    >>> governor = ThreadGovernor(cfg.train.threads)   # 0: follow the load; n > 0: always n
    >>> governor.before_step()                          # at the start of each step; returns the thread count
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def busy_ticks(stat_line: str, include_niced: bool) -> int:
    """Busy clock ticks in /proc/stat's ``cpu`` line: all but idle and iowait (steal counts: the hypervisor gave
    that time to someone else); niced processes' user time only if asked."""
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in stat_line.split()[1:9])
    return user + system + irq + softirq + steal + (nice if include_niced else 0)


def busy_seconds(include_niced: bool) -> float:
    """CPU-seconds processes on this machine have run since boot (see :func:`busy_ticks`)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0]
    return busy_ticks(first, include_niced) / os.sysconf("SC_CLK_TCK")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_for(cores: int, foreign_cores: float) -> int:
    """Threads that leave other processes the cores they use: a core counts as taken once others used more
    than half of it on average; at least one thread."""
    taken = int(foreign_cores + 0.5)
    return max(1, cores - taken)


class ThreadGovernor:
    """Sets torch's intra-op thread count before each step: fixed (``threads`` > 0) or, with 0, from the CPU
    other processes at our priority or above used since the previous call (the last step, measured whole, so
    a blip does not count)."""

    def __init__(self, threads: int = 0, cores: int | None = None):
        if threads < 0:
            raise ValueError(f"threads: expected 0 (follow the load) or a positive count, got {threads}")
        self.fixed = threads
        self.cores = cores or available_cores()
        self.threads = threads or self.cores
        # Niced processes yield to us, unless we are niced ourselves: then they are our peers (and our own
        # CPU time is in /proc/stat's nice column, which must then count to be subtracted).
        self.include_niced = os.nice(0) > 0
        self._last: tuple[float, float, float] | None = None
        self._apply()

    def _apply(self) -> None:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def before_step(self) -> int:
        now = (time.perf_counter(), busy_seconds(self.include_niced), time.process_time())
        if not self.fixed and self._last is not None:
            wall, busy, own = (b - a for a, b in zip(self._last, now))
            if wall > 0:
                self.threads = threads_for(self.cores, max(busy - own, 0.0) / wall)
                self._apply()
        self._last = now
        return self.threads
