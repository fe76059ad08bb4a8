"""The benchmark harness's helpers: step medians, token counting, FLOP formulas, per-child peak RSS, the table.

Fast and untimed: nothing here asserts a speed; the benchmark itself is `benchmarks/ppo_vs_trl.py`.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import common  # noqa: E402
import ppo_vs_trl  # noqa: E402


def test_steady_median_drops_the_warmup_step():
    assert common.steady_median([100.0, 1.0, 3.0, 2.0]) == 2.0
    assert common.steady_median([100.0, 1.0, 3.0, 2.0], warmup=0) == 2.5
    assert common.steady_median([7.0]) == 7.0  # a single step is all there is
    with pytest.raises(ValueError):
        common.steady_median([])


def test_tokens_up_to_eos_counts_the_eos_and_stops_there():
    eos = 2
    assert common.tokens_up_to_eos([[5, 6, 2, 2, 2], [5, 6, 7, 8, 9], [2, 9, 9]], eos) == 3 + 5 + 1


def test_summarize_steps_excludes_the_first_step_everywhere():
    steps = [common.StepRecord(seconds=10.0, generated_tokens=100, generation_seconds=5.0, cpu_seconds=20.0,
                               foreign_cpu_seconds=0.0, train_seconds=4.0, train_tokens=400, train_flops=4e3,
                               train_forward_flops=2e3),
             common.StepRecord(seconds=2.0, generated_tokens=100, generation_seconds=1.0, cpu_seconds=3.0,
                               foreign_cpu_seconds=0.1, train_seconds=1.0, train_tokens=800, train_flops=8e3,
                               train_forward_flops=4e3),
             common.StepRecord(seconds=4.0, generated_tokens=200, generation_seconds=3.0, cpu_seconds=5.0,
                               foreign_cpu_seconds=2.0, train_seconds=2.0, train_tokens=800, train_flops=8e3,
                               train_forward_flops=4e3)]
    summary = common.summarize_steps(steps)
    assert summary["sec_per_step_median"] == 3.0
    assert summary["tokens_per_s_median"] == 50.0  # both kept steps run at 50 tokens/s
    assert summary["generation_seconds_median"] == 2.0
    assert summary["train_tokens_per_s_median"] == 600.0  # (800/1 + 800/2) / 2
    assert summary["train_flops_per_s_median"] == 6e3
    assert summary["train_full_6nt_flops_per_s_median"] == 9e3  # 3 forwards instead of 2
    assert summary["cpu_sec_per_step_median"] == 4.0
    # step 3 shared the machine with half a core of someone else's work: not quiet
    assert summary["foreign_cores_per_step"] == [0.0, 0.05, 0.5]
    assert summary["quiet_steps"] == 1 and summary["sec_per_step_quiet_median"] == 2.0


def test_flop_formulas():
    assert common.matmul_flops(2) == 16.0
    # decoder on all 5 tokens, LM head on the 2 response positions only
    forward = common.forward_flops(body_params=10, tokens=5, head_params=100, head_tokens=2)
    assert forward == 2 * (10 * 5 + 100 * 2)
    assert common.full_train_flops(forward) == 6 * (10 * 5 + 100 * 2)  # the 6NT rule
    # LoRA: forward + activation grads (2 forwards) + adapter weight grads 2 N_lora T
    assert common.lora_train_flops(forward, lora_params=1, tokens=5) == 2 * forward + 2 * 1 * 5
    assert common.lora_train_flops(forward, 1, 5) < common.full_train_flops(forward)


def test_step_clock_measures_own_cpu_and_the_machines():
    clock = common.StepClock()
    with pytest.raises(RuntimeError):
        clock.lap()
    clock.start()
    deadline = time.perf_counter() + 0.3
    while time.perf_counter() < deadline:  # burn CPU in this process
        pass
    lap = clock.lap()
    assert lap.seconds >= 0.3
    assert 0.0 < lap.cpu_seconds <= lap.seconds + 0.05  # one busy thread, however shared the machine
    assert lap.foreign_cpu_seconds >= 0.0
    assert common.machine_busy_seconds() > 0


def test_workload_round_trips_through_json(tmp_path):
    wl = common.Workload(policy_path="p", reward_path="r", prompts=[f"q{i}" for i in range(64)],
                         chat_prompts=[f"<chat>q{i}" for i in range(64)])
    wl.save(tmp_path / "w.json")
    again = common.Workload.load(tmp_path / "w.json")
    assert again == wl and again.num_steps == 8


def test_run_child_sees_the_childs_own_peak_rss(tmp_path):
    """A child that touches ~200 MB: its own VmHWM, the parent's sampled RSS and wait4 all see it."""
    out = tmp_path / "child.json"
    code = (f"import sys, json, time; sys.path.insert(0, {str(BENCH_DIR)!r}); import common; "
            "block = bytearray(200 * 1024 * 1024); time.sleep(0.6); "
            f"json.dump({{'peak': common.own_peak_rss_bytes()}}, open({str(out)!r}, 'w'))")
    child = common.run_child([sys.executable, "-c", code], sample_every=0.05, log_path=tmp_path / "child.log")
    assert child.returncode == 0
    own_peak = json.loads(out.read_text())["peak"]
    assert own_peak > 200 * 1024 * 1024
    assert child.sampled_peak_rss_bytes > 180 * 1024 * 1024
    assert child.ru_maxrss_bytes > 180 * 1024 * 1024  # kernel counters lag VmHWM by a few pages
    assert len(child.load_before) == 3


def test_memory_trace_marks_rise_with_allocation():
    trace = common.MemoryTrace()
    trace.mark("before")
    block = bytearray(64 * 1024 * 1024)  # noqa: F841 (held until the second mark)
    trace.mark("after")
    before, after = trace.points
    assert after["at"] == "after" and after["rss_bytes"] - before["rss_bytes"] > 50 * 1024 * 1024
    assert after["peak_rss_bytes"] >= after["rss_bytes"]


def test_run_child_reports_failure(tmp_path):
    child = common.run_child([sys.executable, "-c", "raise SystemExit(3)"], log_path=tmp_path / "log")
    assert child.returncode == 3


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_matmul_peak_is_a_positive_rate(dtype):
    peak = common.measure_matmul_peak(dtype, n=32, repeats=3, min_seconds=0.01, threads=1)
    assert peak["flops_per_s_median"] > 0 and len(peak["flops_per_s_all"]) == 3 and peak["dtype"] == dtype


def test_benchmark_prompts_fit_and_are_distinct(tiny_llama_path):
    from rlhf.zoo import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_path)
    prompts, rendered = ppo_vs_trl.benchmark_prompts(tokenizer, 8, max_tokens=128)
    assert len(prompts) == len(set(prompts)) == len(rendered) == 8
    assert all(p.rstrip().endswith("Assistant:") for p in prompts)  # HH transcripts, what our trainer takes
    assert all(len(tokenizer(r, add_special_tokens=False)["input_ids"]) <= 128 for r in rendered)
    with pytest.raises(RuntimeError, match="fit 1 tokens"):
        ppo_vs_trl.benchmark_prompts(tokenizer, 8, max_tokens=1)


def _side_run(side, run, sec, rss, tps):
    return {"side": side, "run": run, "sec_per_step_median": sec, "peak_rss_bytes": rss, "tokens_per_s_median": tps,
            "sec_per_step_quiet_median": sec * 0.9, "quiet_steps": 5, "steps": 8, "warmup_steps_excluded": 1,
            "cpu_sec_per_step_median": sec * 2,
            "load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.0, 1.0],
            "memory_trace": [{"at": "models loaded", "rss_bytes": rss / 2, "peak_rss_bytes": rss * 0.9}]}


def test_aggregate_ratios_and_table():
    gib = common.GIB
    ours = [_side_run("ours", 0, 4.0, 1.0 * gib, 60.0), _side_run("ours", 1, 6.0, 1.2 * gib, 40.0)]
    trl = [_side_run("trl", 0, 12.0, 5.0 * gib, 20.0), _side_run("trl", 1, 13.0, 5.2 * gib, 18.0)]
    for run in ours:
        run.update(train_tokens_per_s_median=1000.0, train_seconds_median=1.0, train_flops_per_s_median=4.2e5,
                   train_full_6nt_flops_per_s_median=6e5, model_body_params=100, model_head_params=50,
                   trainable_params=10, compute_dtype="float32")
    sides = {"ours": ppo_vs_trl.aggregate(ours), "trl": ppo_vs_trl.aggregate(trl)}
    assert sides["ours"]["sec_per_step"] == 5.0 and sides["trl"]["peak_rss_bytes"] == 5.1 * gib
    peaks = {"bfloat16": {"n": 2048, "threads": 2, "repeats": 5, "flops_per_s_median": 1e6},
             "float32": {"n": 2048, "threads": 2, "repeats": 5, "flops_per_s_median": 4e6}}
    flops = ppo_vs_trl.training_flops_report(ours, peaks)
    assert flops["achieved_flops_per_s"] == 4.2e5
    assert flops["fraction_of_peak"] == {"bfloat16": pytest.approx(0.42), "float32": pytest.approx(0.105)}
    result = {"sides": sides, "runs": ours + trl, "training_flops": flops,
              "ratios": {"sec_per_step": 5.0 / 12.5, "peak_rss": 1.1 / 5.1, "tokens_per_s": 50.0 / 19.0},
              "matmul_peaks": peaks,
              "workload": {"num_prompts": 64, "batch_size": 8, "mini_batch_size": 4, "max_new_tokens": 32,
                           "ppo_epochs": 1, "threads": 2, "num_steps": 8}}
    table = ppo_vs_trl.format_table(result)
    assert "seconds / PPO step" in table and "0.40x" in table and "PASS" in table
    assert "peak RSS (GiB)" in table and "0.22x" in table
    assert "of which by loading" in table
    assert "quiet steps only" in table and "(10/14 ours, 10/14 TRL steps" in table
    assert "CPU-seconds / step" in table
    assert "42% of the bfloat16 peak" in table and "10% of the float32 peak" in table
