"""How many threads a stage computes with, and how idle threads wait, on a CPU that others may share.

Two OpenMP threads on two cores wait for each other at every parallel region's barrier. When another process
takes one core, the thread that shares it is descheduled for whole scheduler slices and every barrier waits
for it; a spinning waiter meanwhile burns the core the other process needs (measured: benchmarks/shared_cpu.py).
So: idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``), and the intra-op thread count follows the cores the
other processes leave free, re-checked before every step.

    >>> governor = ThreadGovernor(cfg.train.threads)   # 0: follow the load; n > 0: always n
    >>> governor.before_step()                          # at the start of each step; returns the thread count
"""
from __future__ import annotations

import os
import time
from pathlib import Path

# libgomp reads its wait policy once, when torch loads it: this module must be imported before torch for it to
# apply (rlhf/__init__.py imports it). A user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def machine_busy_seconds() -> float:
    """CPU-seconds every process on this machine has run since boot (/proc/stat: all but idle and iowait)."""
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


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
    other processes used since the previous call (the last step, measured whole, so a blip does not count)."""

    def __init__(self, threads: int = 0, cores: int | None = None):
        if threads < 0:
            raise ValueError(f"threads: expected 0 (follow the load) or a positive count, got {threads}")
        self.fixed = threads
        self.cores = cores or available_cores()
        self.threads = threads or self.cores
        self._last: tuple[float, float] | None = None
        self._apply()

    def _apply(self) -> None:
        import torch

        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def before_step(self) -> int:
        now = (time.perf_counter(), machine_busy_seconds(), time.process_time())
        if not self.fixed and self._last is not None:
            wall, busy, own = (b - a for a, b in zip(self._last, now))
            if wall > 0:
                self.threads = threads_for(self.cores, max(busy - own, 0.0) / wall)
                self._apply()
        self._last = now
        return self.threads
