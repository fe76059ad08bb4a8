"""rlhf.core.threads (the thread count on a shared CPU) and benchmarks/shared_cpu.py's pure logic.

Fast and untimed: the speed itself is measured by `benchmarks/shared_cpu.py`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.core import threads

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import shared_cpu  # noqa: E402


@pytest.mark.parametrize("cores, foreign, expected", [
    (2, 0.0, 2), (2, 0.4, 2),   # a blip (less than half a core) leaves both cores ours
    (2, 0.6, 1), (2, 1.0, 1),   # one busy process: one thread on the free core
    (2, 3.0, 1),                # never fewer than one thread
    (8, 2.2, 6), (1, 0.0, 1),
])
def test_threads_for_leaves_the_cores_others_use(cores, foreign, expected):
    assert threads.threads_for(cores, foreign) == expected


def test_busy_ticks_leave_out_niced_time_unless_asked():
    line = "cpu  100 40 20 500 7 1 2 3 0 0"  # user nice system idle iowait irq softirq steal guest guest_nice
    assert threads.busy_ticks(line, include_niced=False) == 100 + 20 + 1 + 2 + 3
    assert threads.busy_ticks(line, include_niced=True) == 100 + 40 + 20 + 1 + 2 + 3


def test_governor_fixed_count_ignores_the_load(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        busy = iter([0.0, 100.0])  # others used every core there is
        monkeypatch.setattr(threads, "busy_seconds", lambda include_niced: next(busy))
        governor = threads.ThreadGovernor(1, cores=2)
        assert torch.get_num_threads() == 1
        assert governor.before_step() == 1 and governor.before_step() == 1
    finally:
        torch.set_num_threads(before)


def test_governor_follows_the_cpu_others_used_during_the_last_step(monkeypatch):
    import torch

    before = torch.get_num_threads()
    clock = {"wall": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads, "busy_seconds", lambda include_niced: clock["busy"])
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])

    def step(wall, own, foreign):
        clock["wall"] += wall
        clock["own"] += own
        clock["busy"] += own + foreign

    try:
        governor = threads.ThreadGovernor(0, cores=2)
        assert governor.before_step() == 2  # first call: nothing measured yet, all cores
        step(wall=10.0, own=18.0, foreign=9.0)  # a busy process took 0.9 of a core on average
        assert governor.before_step() == 1 and torch.get_num_threads() == 1
        step(wall=10.0, own=10.0, foreign=1.0)  # it is gone (0.1 core of noise)
        assert governor.before_step() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_governor_rejects_a_negative_count():
    with pytest.raises(ValueError, match="threads"):
        threads.ThreadGovernor(-1)


# ---------------------------------------------------------------- benchmarks/shared_cpu.py


def test_run_order_alternates_settings_within_every_condition_and_round():
    order = shared_cpu.run_order(2, ["alone", "nice19"], ["old", "new"])
    assert order == [(0, "alone", "old"), (0, "alone", "new"), (0, "nice19", "old"), (0, "nice19", "new"),
                     (1, "alone", "old"), (1, "alone", "new"), (1, "nice19", "old"), (1, "nice19", "new")]


def test_slowdowns_divide_loaded_by_the_same_settings_alone():
    def run(setting, condition, sec):
        return {"setting": setting, "condition": condition, "sec_per_step_median": sec}

    runs = [run("old", "alone", 4.0), run("old", "alone", 6.0), run("old", "same", 20.0),
            run("new", "alone", 6.0), run("new", "same", 9.0), run("new", "same", 12.0)]
    summary = shared_cpu.slowdowns(runs, ["old", "new"], ["alone", "same"])
    assert summary["old"]["sec_per_step"] == {"alone": 5.0, "same": 20.0}
    assert summary["old"]["slowdown"] == {"same": 4.0}
    assert summary["new"]["slowdown"] == {"same": 1.75}
    assert summary["new"]["vs_old_alone"] == {"alone": 1.2, "same": 2.1}
    table = shared_cpu.table({"conditions": ["alone", "same"], "summary": summary})
    assert "4.00x" in table and "1.75x" in table and "same/alone <= 2.0x" in table


def test_busy_process_runs_only_inside_its_block():
    with shared_cpu.BusyProcess(19, max_seconds=30) as busy:
        pid = busy.proc.pid
        assert busy.proc.poll() is None
        deadline = time.monotonic() + 10  # `nice` sets the niceness, then execs the loop: wait for it
        while os.getpriority(os.PRIO_PROCESS, pid) != 19 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert busy.proc.poll() is not None
    with shared_cpu.BusyProcess(None, max_seconds=30) as nothing:
        assert nothing.proc is None


def test_busy_process_stops_by_itself_at_its_deadline():
    done = subprocess.run(shared_cpu.busy_command(0.2), timeout=20)
    assert done.returncode == 0
