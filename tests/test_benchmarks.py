"""The benchmark harness's helpers: step medians, token counting, FLOP formulas, per-child peak RSS, the table.

Fast and untimed: nothing here asserts a speed; the benchmarks themselves are `benchmarks/ppo_vs_trl.py` and
`benchmarks/rl_vs_trl.py`.
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
import harness  # noqa: E402
import ppo_vs_trl  # noqa: E402
import rl_vs_trl  # noqa: E402
import rm_seeds  # noqa: E402
import trl_grpo_side  # noqa: E402  (standard library + common only at import, like on TRL's side)


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
    from rlhf.models.zoo import load_tokenizer

    tokenizer = load_tokenizer(tiny_llama_path)
    prompts, rendered = harness.benchmark_prompts(tokenizer, 8, max_tokens=128)
    assert len(prompts) == len(set(prompts)) == len(rendered) == 8
    assert all(p.rstrip().endswith("Assistant:") for p in prompts)  # HH transcripts, what our trainer takes
    assert all(len(tokenizer(r, add_special_tokens=False)["input_ids"]) <= 128 for r in rendered)
    with pytest.raises(RuntimeError, match="fit 1 tokens"):
        harness.benchmark_prompts(tokenizer, 8, max_tokens=1)


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
    sides = {"ours": harness.aggregate(ours), "trl": harness.aggregate(trl)}
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


# ---------------------------------------------------------------- GRPO against TRL (rl_vs_trl.py)


def test_workload_defaults_keep_the_ppo_meaning():
    ppo = common.Workload(policy_path="p", reward_path="r", prompts=["q"] * 64, chat_prompts=["c"] * 64)
    assert ppo.samples_per_prompt == 1 and ppo.rollouts_per_step == ppo.batch_size == 8 and ppo.num_steps == 8
    grpo = common.Workload(policy_path="p", reward_path="r", prompts=["q"] * 64, chat_prompts=["c"] * 64,
                           **rl_vs_trl.GRPO_WORKLOAD)
    assert grpo.rollouts_per_step == 32 and grpo.num_steps == 8  # 8 prompts x 4 completions, all 64 prompts once


def test_parse_lscpu_reads_the_model_and_the_bf16_flags():
    text = ("Architecture:            x86_64\n"
            "Model name:              AMD EPYC 9B14\n"
            "Flags:                   fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert common.parse_lscpu(text) == {"model_name": "AMD EPYC 9B14", "avx512_bf16": True, "amx_bf16": False,
                                        "amx_tile": False}
    amx = common.parse_lscpu("Model name: Intel Xeon\nFlags: avx2 amx_bf16 amx_tile amx_int8\n")
    assert amx["amx_bf16"] and amx["amx_tile"] and not amx["avx512_bf16"]
    assert common.parse_lscpu("") == {"model_name": None, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False}


def test_trl_grpo_batching_gives_one_optimizer_step_per_generation():
    wl = common.Workload(policy_path="p", reward_path="r", prompts=["q"] * 64, chat_prompts=["c"] * 64,
                         **rl_vs_trl.GRPO_WORKLOAD)
    fields = trl_grpo_side.grpo_batching(wl)
    assert fields == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4, "steps_per_generation": 4,
                      "num_generations": 4}
    # what GRPOConfig derives from them: a generation batch of 32 rollouts = one optimizer step's
    assert fields["per_device_train_batch_size"] * fields["steps_per_generation"] == wl.rollouts_per_step
    whole = common.Workload(policy_path="p", reward_path="r", prompts=[], chat_prompts=[],
                            **{**rl_vs_trl.GRPO_WORKLOAD, "micro_batch_size": 0})
    assert trl_grpo_side.grpo_batching(whole)["gradient_accumulation_steps"] == 1  # 0 = all 32 in one pass
    with pytest.raises(ValueError, match="rollouts per step"):
        trl_grpo_side.grpo_batching(common.Workload(policy_path="p", reward_path="r", prompts=[], chat_prompts=[],
                                                    **{**rl_vs_trl.GRPO_WORKLOAD, "mini_batch_size": 16}))


def test_our_argv_sets_grpo_and_the_kl_loss_term():
    wl = common.Workload(policy_path="p", reward_path="r", prompts=["q"] * 64, chat_prompts=["c"] * 64,
                         **rl_vs_trl.GRPO_WORKLOAD)
    argv = rl_vs_trl.our_argv(wl)
    flags = dict(zip(argv[::2], argv[1::2]))
    assert flags["--rl.algo"] == "grpo" and flags["--rl.samples_per_prompt"] == "4"
    assert flags["--update.batch_size"] == "8" and flags["--update.mini_batch_size"] == "32"
    assert flags["--kl.placement"] == "loss" and flags["--kl.estimator"] == "k3"
    assert float(flags["--kl.coef"]) == 0.04 and "." in flags["--kl.coef"]  # YAML 1.1 reads "4e-02" as a string
    assert flags["--generation.batch_size"] == "32"
    assert json.loads(flags["--lora.layers"]) == [-8, -7, -6, -5, -4, -3, -2, -1]
    # and our stage config takes every one of them (strict keys), with the meaning the benchmark claims
    from rlhf.core.config import load_config
    from rlhf.rl.config import RLStageConfig

    cfg, _ = load_config(RLStageConfig, argv)
    assert cfg.rl.algo == "grpo" and cfg.rl.samples_per_prompt == 4 and cfg.kl_in_loss and cfg.kl.coef == 0.04
    assert (cfg.update.batch_size, cfg.update.mini_batch_size, cfg.update.micro_batch_size, cfg.update.epochs) == (8, 32, 8, 1)
    assert cfg.generation.batch_size == 32 and cfg.train.learning_rate == 1e-5 and cfg.train.max_steps == 8


def _grpo_run(side, run, sec, rss, tps, phases):
    return {**_side_run(side, run, sec, rss, tps), "generation_seconds_median": sec / 2,
            "phase_seconds": [{name: 100.0 for name in phases}] + [dict(phases)] * 7}


def test_rl_vs_trl_phases_ratios_and_table():
    gib = common.GIB
    ours = [_grpo_run("ours", 0, 10.0, 1.0 * gib, 100.0, {"generate": 5.0, "update": 3.0}),
            _grpo_run("ours", 1, 12.0, 1.2 * gib, 80.0, {"generate": 7.0, "update": 4.0})]
    trl = [_grpo_run("trl", 0, 28.0, 3.0 * gib, 35.0, {"generate": 7.0, "reward": 2.0, "rest": 19.0}),
           _grpo_run("trl", 1, 30.0, 3.2 * gib, 33.0, {"generate": 8.0, "reward": 2.0, "rest": 20.0})]
    # the warm-up step (all 100 s) is left out of each run's median
    assert rl_vs_trl.median_phases(ours) == {"generate": 6.0, "update": 3.5}
    sides = {side: {**harness.aggregate(runs), "phase_seconds": rl_vs_trl.median_phases(runs)}
             for side, runs in (("ours", ours), ("trl", trl))}
    ratios = harness.side_ratios(sides)
    assert ratios == {"sec_per_step": pytest.approx(11.0 / 29.0), "peak_rss": pytest.approx(1.1 / 3.1),
                      "tokens_per_s": pytest.approx(90.0 / 34.0),
                      # best ours / worst TRL run .. worst ours / best TRL run
                      "sec_per_step_spread": [pytest.approx(10.0 / 30.0), pytest.approx(12.0 / 28.0)],
                      "peak_rss_spread": [pytest.approx(1.0 / 3.2), pytest.approx(1.2 / 3.0)]}
    result = {"sides": sides, "runs": ours + trl, "ratios": ratios, "precision": "bf16",
              "machine": {"cpu": {"model_name": "AMD EPYC", "cpus": 2, "avx512_bf16": True, "amx_bf16": False}},
              "workload": {"num_prompts": 64, "batch_size": 8, "samples_per_prompt": 4, "max_new_tokens": 32,
                           "kl_coef": 0.04, "threads": 2, "num_steps": 8, "lora_layers": [-2, -1]}}
    table = rl_vs_trl.format_table(result)
    assert "seconds / step" in table and "0.38x" in table and "<= 0.5  PASS" in table
    assert "(runs: 0.33-0.43x)" in table
    assert "peak RSS (GiB)" in table and "0.35x" in table
    assert "TRL 1.16 per run: s/step [28.00, 30.00]" in table and "generate 6.00, update 3.50" in table
    assert "AMD EPYC" in table and "avx512_bf16 True" in table and "ours#0: 1.00->2.00" in table
    slow = {**sides, "ours": {**sides["ours"], "sec_per_step": 20.0}}
    assert "MISS" in rl_vs_trl.format_table({**result, "sides": slow, "ratios": harness.side_ratios(slow)})


def test_both_sides_run_under_our_cache_caps(monkeypatch):
    """The peer's side never imports our package: common.py repeats rlhf.rl.memory's caps, and every side's
    process gets them through its environment (ours keeps a value already set, so both run with the same)."""
    from rlhf.rl import memory

    assert common.CACHE_CAP_ENV == (memory.ONEDNN_CACHE_ENV, memory.IDEEP_CACHE_ENV)
    assert common.CACHE_CAPACITY == memory.ONEDNN_CACHE_CAPACITY
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    env = harness.child_env(2)
    assert {name: env[name] for name in common.CACHE_CAP_ENV} == {name: "64" for name in common.CACHE_CAP_ENV}
    common.HeapTrimmer().trim()  # a no-op off glibc, never an error


def test_precision_is_resolved_once_for_both_sides(monkeypatch):
    assert common.resolve_precision("fp32") == "fp32" and common.resolve_precision("bf16") == "bf16"
    monkeypatch.setattr(common, "cpu_has_bf16_matmul", lambda: False)
    assert common.resolve_precision("auto") == "fp32"
    monkeypatch.setattr(common, "cpu_has_bf16_matmul", lambda: True)
    assert common.resolve_precision("auto") == "bf16"
    with pytest.raises(ValueError, match="--precision"):
        common.resolve_precision("fp16")
    assert common.Workload(policy_path="p", reward_path="r", prompts=[], chat_prompts=[]).precision == "fp32"  # older workloads


@pytest.mark.real
def test_gpu_check_plans_every_demo_stage_and_refuses_a_machine_without_cuda(tmp_path, monkeypatch, capsys,
                                                                             pulled_zoo):
    """The planner reads the demo's models' config.json without pulling them (``auto_pull=False``): pulled here."""
    import gpu_check

    from pipelines.run import PRESETS
    from rlhf.core import runtime
    from rlhf.core.config import load_config
    from rlhf.pipeline import PipelineConfig, resolve_stage

    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == len(gpu_check.STAGES) + 1 and all("--run.device cuda" in c for c in commands[:-1])
    cfg, _ = load_config(PipelineConfig, gpu_check.pipeline_argv(tmp_path, len(gpu_check.STAGES) - 1)[3:],
                         PRESETS["demo"])
    planned = {name: gpu_check.planned_gib(resolve_stage(cfg, name)) for name in gpu_check.STAGES}
    assert all(planned[n] > 0.1 for n in ("sft", "reward", "gold", "ppo")) and planned["eval"] is None
    assert resolve_stage(cfg, "ppo").config.run.device == "cuda"  # the pipeline hands run.device to every stage
    monkeypatch.setattr(runtime, "cuda_present", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: benchmarks/gpu_check.py needs a CUDA device")


def test_seed_interval_is_students_t_over_seeds():
    mean, low, high = rm_seeds.seed_interval([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303: 2 ± 4.303/√3
    assert mean == 2.0 and low == pytest.approx(2 - 2.48434, abs=1e-4) and high == pytest.approx(2 + 2.48434, abs=1e-4)
    mean, low, high = rm_seeds.seed_interval([0.6, 0.7])  # sd 0.0707, t(0.975, 1) = 12.706: 0.65 ± 0.6353
    assert mean == pytest.approx(0.65) and low == pytest.approx(0.0147, abs=1e-4)
    mean, low, high = rm_seeds.seed_interval([0.5])
    assert mean == 0.5 and low != low and high != high  # one seed: no interval (nan)
